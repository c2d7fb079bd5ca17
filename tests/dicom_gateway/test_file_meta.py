"""dicom_gateway.header.scan_file_meta reads a Part-10 File Meta Information as pydicom does: the same
values, and the data set starting exactly where pydicom's reader starts it; malformed groups raise
HeaderError."""

from __future__ import annotations

import struct
import zlib
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from dicom_gateway.header import HeaderError, scan_file_meta
from tests.dicom_gateway.gateway_helpers import dataset_bytes, make_ct_dataset

MEDIA_STORAGE_SOP_CLASS = 0x00020002
MEDIA_STORAGE_SOP_INSTANCE = 0x00020003
TRANSFER_SYNTAX = 0x00020010
SOURCE_AE_TITLE = 0x00020016
PRIVATE_INFORMATION = 0x00020102

PREAMBLE = b"\x00" * 128 + b"DICM"
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
            RLELossless]
# Optional File Meta elements (PS3.10 7.1) on top of what pydicom always writes.
OPTIONAL_META: dict[str, dict[str, object]] = {
    "minimal": {},
    "source-ae": {"SourceApplicationEntityTitle": "MODALITY"},  # 8 characters: no padding
    "odd-source-ae": {"SourceApplicationEntityTitle": "CT_SCAN"},  # 7 characters: padded with a space
    "all-optional": {
        "SourceApplicationEntityTitle": "MODALITY01",
        "SendingApplicationEntityTitle": "ROUTER",
        "ReceivingApplicationEntityTitle": "TAMSOAT",
        "PrivateInformationCreatorUID": "1.2.826.0.1.3680043.8.498.1",
        "PrivateInformation": b"\x01\x02\x03\x04private!",
    },
}


def _write(tmp_path: Path, syntax: str, extra: dict[str, object], *, seed: int = 5, size: int = 16) -> Path:
    ds = make_ct_dataset(seed=seed, size=size)
    path = tmp_path / f"{UID(syntax).name.replace(' ', '_')}.dcm"
    if syntax == RLELossless:
        ds.compress(RLELossless)  # sets the file meta's transfer syntax too
    else:
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    for keyword, value in extra.items():
        setattr(ds.file_meta, keyword, value)
    if syntax == ExplicitVRBigEndian:
        ds.save_as(path, enforce_file_format=True, little_endian=False, implicit_vr=False)
    else:
        ds.save_as(path, enforce_file_format=True)
    return path


def _text(raw: bytes) -> str:
    return raw.decode("ascii").rstrip("\x00 ")


def _pydicom_data_set(encoded: bytes, syntax: str) -> Dataset:
    """The data set pydicom reads from ``encoded`` (the bytes from our offset on)."""
    ts = UID(syntax)
    if ts == DeflatedExplicitVRLittleEndian:
        encoded = zlib.decompress(encoded, -zlib.MAX_WBITS)
    return read_dataset(BytesIO(encoded), ts.is_implicit_VR, ts.is_little_endian)


@pytest.mark.parametrize("optional", list(OPTIONAL_META), ids=list(OPTIONAL_META))
@pytest.mark.parametrize("syntax", SYNTAXES, ids=[UID(s).name for s in SYNTAXES])
def test_values_and_offset_match_pydicom(tmp_path: Path, syntax: str, optional: str) -> None:
    path = _write(tmp_path, syntax, OPTIONAL_META[optional])
    data = path.read_bytes()
    found, offset = scan_file_meta(data)
    meta = read_file_meta_info(path)
    assert meta.TransferSyntaxUID == syntax  # the file is what the test means it to be

    assert _text(found[MEDIA_STORAGE_SOP_CLASS]) == meta.MediaStorageSOPClassUID == CTImageStorage
    assert _text(found[MEDIA_STORAGE_SOP_INSTANCE]) == meta.MediaStorageSOPInstanceUID
    assert _text(found[TRANSFER_SYNTAX]) == meta.TransferSyntaxUID == syntax
    # Raw values as encoded: padded to an even length.
    assert all(len(value) % 2 == 0 for value in found.values())

    # Every element pydicom reads is found, with the same value, and nothing else.
    expected = {int(elem.tag) for elem in meta} - {0x00020000}
    assert set(found) - {0x00020000} == expected
    for elem in meta:
        tag = int(elem.tag)
        if tag == 0x00020000:
            continue
        if elem.VR in ("OB", "UN"):
            assert found[tag] == elem.value, elem.keyword
        else:
            assert _text(found[tag]) == str(elem.value).strip(), elem.keyword
    if "SourceApplicationEntityTitle" in OPTIONAL_META[optional]:
        assert _text(found[SOURCE_AE_TITLE]) == OPTIONAL_META[optional]["SourceApplicationEntityTitle"]
    else:
        assert SOURCE_AE_TITLE not in found
    if "PrivateInformation" in OPTIONAL_META[optional]:
        assert found[PRIVATE_INFORMATION] == b"\x01\x02\x03\x04private!"

    # The offset: past the group, where pydicom starts the data set.
    assert offset == 144 + meta.FileMetaInformationGroupLength
    assert dataset_bytes(path) == data[offset:]
    assert data[offset:offset + 2] != b"\x02\x00"  # not inside group 0002 any more
    read_back = _pydicom_data_set(data[offset:], syntax)
    full = dcmread(path)
    assert read_back == full
    assert read_back.SOPInstanceUID == meta.MediaStorageSOPInstanceUID
    assert read_back.PixelData == full.PixelData


def test_only_the_meta_bytes_are_needed(tmp_path: Path) -> None:
    """A head cut right after the File Meta Information is enough; more bytes change nothing."""
    path = _write(tmp_path, ExplicitVRLittleEndian, OPTIONAL_META["all-optional"], size=64)
    data = path.read_bytes()
    whole, offset = scan_file_meta(data)
    assert len(data) - offset > 8000
    cut, cut_offset = scan_file_meta(data[:offset])
    assert (cut, cut_offset) == (whole, offset)
    with pytest.raises(HeaderError):
        scan_file_meta(data[:offset - 1])


def test_big_private_information_is_read(tmp_path: Path) -> None:
    """An optional element of 10 KB: the group length accounts for it, the offset follows it."""
    private = bytes(range(256)) * 40
    path = _write(tmp_path, ImplicitVRLittleEndian, {
        "PrivateInformationCreatorUID": "1.2.826.0.1.3680043.8.498.2", "PrivateInformation": private,
    })
    data = path.read_bytes()
    found, offset = scan_file_meta(data)
    assert found[PRIVATE_INFORMATION] == private
    assert offset > len(private) + 144
    assert dataset_bytes(path) == data[offset:]
    assert _pydicom_data_set(data[offset:], ImplicitVRLittleEndian) == dcmread(path)


# -- malformed meta information ---------------------------------------------------------------------


def _element(group: int, element: int, vr: bytes, value: bytes, *, length: int | None = None) -> bytes:
    """One explicit VR little endian element; ``length`` overrides the declared value length."""
    declared = len(value) if length is None else length
    if vr in (b"OB", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2s2xL", group, element, vr, declared) + value
    return struct.pack("<HH2sH", group, element, vr, declared) + value


GOOD_ELEMENTS = [
    _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
    _element(0x0002, 0x0002, b"UI", CTImageStorage.encode() + b"\x00"),
    _element(0x0002, 0x0003, b"UI", b"1.2.3.4.5.6"),
    _element(0x0002, 0x0010, b"UI", ExplicitVRLittleEndian.encode() + b"\x00"),
    _element(0x0002, 0x0012, b"UI", b"1.2.3.4"),
]
DATA_SET = _element(0x0008, 0x0016, b"UI", CTImageStorage.encode() + b"\x00")


def _file(elements: list[bytes], *, group_length: int | None = None, tail: bytes = DATA_SET) -> bytes:
    body = b"".join(elements)
    declared = len(body) if group_length is None else group_length
    return PREAMBLE + _element(0x0002, 0x0000, b"UL", struct.pack("<L", declared)) + body + tail


def test_hand_made_meta_is_read() -> None:
    """The baseline for the malformed variants below: the same construction, well formed."""
    data = _file(GOOD_ELEMENTS)
    found, offset = scan_file_meta(data)
    assert data[offset:] == DATA_SET
    assert found == {
        0x00020001: b"\x00\x01",
        MEDIA_STORAGE_SOP_CLASS: CTImageStorage.encode() + b"\x00",
        MEDIA_STORAGE_SOP_INSTANCE: b"1.2.3.4.5.6",
        TRANSFER_SYNTAX: ExplicitVRLittleEndian.encode() + b"\x00",
        0x00020012: b"1.2.3.4",
    }


def test_no_dicm_prefix() -> None:
    data = _file(GOOD_ELEMENTS)
    with pytest.raises(HeaderError, match="DICM"):
        scan_file_meta(data[:128] + b"DICN" + data[132:])
    with pytest.raises(HeaderError):
        scan_file_meta(data[132:])  # no preamble
    with pytest.raises(HeaderError):
        scan_file_meta(b"\x00" * 1000)


@pytest.mark.parametrize("length", [0, 1, 131, 132, 140, 143])
def test_shorter_than_144_bytes(length: int) -> None:
    with pytest.raises(HeaderError):
        scan_file_meta(_file(GOOD_ELEMENTS)[:length])


def test_an_empty_group_with_exactly_144_bytes() -> None:
    """The smallest head that passes the length check: a group length of 0 (no other element)."""
    assert scan_file_meta(_file([], tail=b"")) == ({}, 144)


@pytest.mark.parametrize(
    "first",
    [
        _element(0x0002, 0x0001, b"OB", b"\x00\x01"),  # the group length left out
        _element(0x0002, 0x0000, b"UN", b"\x00" * 4),  # not UL
        _element(0x0008, 0x0000, b"UL", b"\x00" * 4),  # another group's length
        struct.pack("<HHL", 0x0002, 0x0000, 4) + b"\x00" * 4,  # implicit VR
    ],
    ids=["no-group-length", "wrong-vr", "other-group", "implicit-vr"],
)
def test_meta_not_starting_with_its_group_length(first: bytes) -> None:
    data = PREAMBLE + first + b"".join(GOOD_ELEMENTS) + DATA_SET
    with pytest.raises(HeaderError, match="start with its group length"):
        scan_file_meta(data)


def test_group_length_past_the_bytes_given() -> None:
    body_length = len(b"".join(GOOD_ELEMENTS))
    complete = _file(GOOD_ELEMENTS, tail=b"")
    with pytest.raises(HeaderError, match="longer than the bytes read"):
        scan_file_meta(_file(GOOD_ELEMENTS, group_length=body_length + 100, tail=b""))
    with pytest.raises(HeaderError, match="longer than the bytes read"):
        scan_file_meta(_file(GOOD_ELEMENTS, group_length=0xFFFFFFFF, tail=b""))
    with pytest.raises(HeaderError, match="longer than the bytes read"):
        scan_file_meta(complete[:-1])  # the group's last byte missing


def test_element_of_another_group_inside_the_meta_length() -> None:
    # The data set's first element counted into the group length.
    with pytest.raises(HeaderError, match="malformed File Meta Information element"):
        scan_file_meta(_file(GOOD_ELEMENTS, group_length=len(b"".join(GOOD_ELEMENTS)) + len(DATA_SET)))
    # Group 0008 between two group 0002 elements.
    with pytest.raises(HeaderError, match="malformed File Meta Information element"):
        scan_file_meta(_file([*GOOD_ELEMENTS[:2], DATA_SET, *GOOD_ELEMENTS[2:]]))
    # Group 0003 (a private group next to 0002).
    with pytest.raises(HeaderError, match="malformed File Meta Information element"):
        scan_file_meta(_file([*GOOD_ELEMENTS, _element(0x0003, 0x0010, b"LO", b"PRIVATE ")]))


def test_truncated_element() -> None:
    body = b"".join(GOOD_ELEMENTS)
    # The group length ends inside the last element's value...
    with pytest.raises(HeaderError, match=r"runs past the end|ends inside an element header"):
        scan_file_meta(_file(GOOD_ELEMENTS, group_length=len(body) - 3))
    # ... inside its 8-byte header ...
    last = len(GOOD_ELEMENTS[-1])
    with pytest.raises(HeaderError, match=r"runs past the end|ends inside an element header"):
        scan_file_meta(_file(GOOD_ELEMENTS, group_length=len(body) - last + 5))
    # ... inside the 12-byte header of an OB element.
    with pytest.raises(HeaderError, match=r"runs past the end|ends inside an element header"):
        scan_file_meta(_file([GOOD_ELEMENTS[0]], group_length=10))
    # An element whose declared length runs past the group.
    long_value = [*GOOD_ELEMENTS[:-1], _element(0x0002, 0x0012, b"UI", b"1.2.3.4", length=200)]
    with pytest.raises(HeaderError, match=r"runs past the end|ends inside an element header"):
        scan_file_meta(_file(long_value, tail=b"\x00" * 400))


def test_undefined_length_inside_the_meta() -> None:
    undefined = _element(0x0002, 0x0102, b"OB", b"\x00" * 8, length=0xFFFFFFFF)
    with pytest.raises(HeaderError, match="malformed File Meta Information element"):
        scan_file_meta(_file([*GOOD_ELEMENTS, undefined]))
