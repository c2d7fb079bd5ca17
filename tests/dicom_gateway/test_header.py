"""dicom_gateway.header.scan_header finds exactly the value bytes pydicom writes and reads back."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import data_element_generator, read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

import dicom_gateway.header as header_mod
from dicom_gateway.header import _MAX_DEPTH, WANTED, HeaderError, scan_header
from tests.dicom_gateway.gateway_helpers import encode_le, make_ct_dataset

LANGUAGE_CODE_SEQUENCE = 0x00080006
CODING_SCHEME_IDENTIFICATION_SEQUENCE = 0x00080110
REFERENCED_STUDY_SEQUENCE = 0x00081110
SERIES_INSTANCE_UID = 0x0020000E
ROWS = 0x00280010


@dataclass(frozen=True)
class Syntax:
    uid: str
    implicit: bool
    little: bool

    @property
    def deflated(self) -> bool:
        return self.uid == DeflatedExplicitVRLittleEndian

    @property
    def order(self) -> str:
        return "<" if self.little else ">"


EXPLICIT_LE = Syntax(ExplicitVRLittleEndian, implicit=False, little=True)
IMPLICIT_LE = Syntax(ImplicitVRLittleEndian, implicit=True, little=True)
EXPLICIT_BE = Syntax(ExplicitVRBigEndian, implicit=False, little=False)
DEFLATED = Syntax(DeflatedExplicitVRLittleEndian, implicit=False, little=True)
ALL_SYNTAXES = [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, DEFLATED]
UNCOMPRESSED = [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE]


def _plain(ds: Dataset, syntax: Syntax) -> bytes:
    """``ds`` encoded by pydicom in ``syntax`` (before deflation, for the deflated one)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR = syntax.implicit
    fp.is_little_endian = syntax.little
    write_dataset(fp, ds)
    return fp.getvalue()


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, -15)  # raw deflate (PS3.5 A.5)
    return compressor.compress(data) + compressor.flush()


def _encode(ds: Dataset, syntax: Syntax) -> bytes:
    data = _plain(ds, syntax)
    return _deflate(data) if syntax.deflated else data


def _reference(plain: bytes, syntax: Syntax) -> dict[int, bytes]:
    """The raw value bytes of the top-level WANTED elements, where pydicom's reader finds them."""
    found: dict[int, bytes] = {}
    for elem in data_element_generator(BytesIO(plain), syntax.implicit, syntax.little):
        if elem.tag in WANTED:
            assert isinstance(elem, RawDataElement)
            assert elem.value_tell is not None
            found[elem.tag] = plain[elem.value_tell:elem.value_tell + elem.length]
            assert found[elem.tag] == (elem.value or b"")
    return found


def _ct() -> Dataset:
    ds = make_ct_dataset(sop_uid="1.2.826.0.1.3680043.8.498.1", study_uid="1.2.826.0.1.3680043.8.498.2",
                         series_uid="1.2.826.0.1.3680043.8.498.33")
    del ds.file_meta
    return ds


def _code_item(value: str, undefined: bool) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "RFC5646"
    item.CodeMeaning = f"language {value}"
    item.is_undefined_length_sequence_item = undefined
    return item


def _with_nested_sequences(ds: Dataset) -> Dataset:
    """``ds`` with two sequences of undefined length (items of undefined length, nested two levels deep)
    before (0008,0016), one of them holding its own WANTED-looking elements that must be ignored."""
    inner = _code_item("eng", undefined=True)
    middle = _code_item("vie", undefined=True)
    middle.LanguageCodeSequence = Sequence([inner, _code_item("fra", undefined=False)])
    middle["LanguageCodeSequence"].is_undefined_length = True
    ds.LanguageCodeSequence = Sequence([middle, _code_item("deu", undefined=True)])
    ds["LanguageCodeSequence"].is_undefined_length = True

    scheme = Dataset()
    scheme.CodingSchemeDesignator = "DCM"
    scheme.is_undefined_length_sequence_item = True
    nested = Dataset()  # elements with WANTED tags, but not at the top level
    nested.SOPClassUID = "1.2.3.4"
    nested.SOPInstanceUID = "1.2.3.4.5"
    nested.StudyDescription = "not the study description"
    nested.SeriesInstanceUID = "9.9.9"
    nested.is_undefined_length_sequence_item = True
    scheme.add_new(REFERENCED_STUDY_SEQUENCE, "SQ", Sequence([nested]))
    scheme[REFERENCED_STUDY_SEQUENCE].is_undefined_length = True
    ds.add_new(CODING_SCHEME_IDENTIFICATION_SEQUENCE, "SQ", Sequence([scheme]))
    ds[CODING_SCHEME_IDENTIFICATION_SEQUENCE].is_undefined_length = True
    return ds


def _undefined_sequence_header(tag: int, syntax: Syntax) -> bytes:
    head = struct.pack(syntax.order + "HH", tag >> 16, tag & 0xFFFF)
    if syntax.implicit:
        return head + b"\xff\xff\xff\xff"
    return head + b"SQ\x00\x00\xff\xff\xff\xff"


def _item_tag(element: int, length: int, syntax: Syntax) -> bytes:
    return struct.pack(syntax.order + "HHL", 0xFFFE, element, length)


@pytest.mark.parametrize("syntax", ALL_SYNTAXES, ids=lambda s: s.uid)
def test_wanted_values_match_pydicom(syntax: Syntax) -> None:
    ds = _ct()
    plain = _plain(ds, syntax)
    expected = _reference(plain, syntax)
    assert set(expected) == set(WANTED)  # the CT data set has all of them

    found = scan_header(_encode(ds, syntax), syntax.uid)

    assert found == expected
    assert found[0x00080016] == CTImageStorage.encode() + b"\x00"  # 25 characters, padded with a NUL
    assert found[0x00080018] == b"1.2.826.0.1.3680043.8.498.1\x00"
    assert found[0x0020000D] == b"1.2.826.0.1.3680043.8.498.2\x00"
    assert found[0x0020000E] == b"1.2.826.0.1.3680043.8.498.33"
    assert found[0x00100010] == "Nguyễn^Văn An".encode()  # UTF-8 (ISO_IR 192), even length
    assert found[0x00081030] == "CT ngực liều thấp".encode() + b" "  # odd length: space padded
    assert found[0x00080060] == b"CT"


@pytest.mark.parametrize("syntax", ALL_SYNTAXES, ids=lambda s: s.uid)
def test_undefined_length_sequences_before_the_wanted_tags(syntax: Syntax) -> None:
    ds = _with_nested_sequences(_ct())
    plain = _plain(ds, syntax)
    # pydicom wrote them as asked: an undefined-length (0008,0006) whose first item is of undefined
    # length and opens another undefined-length (0008,0006)
    seq = _undefined_sequence_header(LANGUAGE_CODE_SEQUENCE, syntax)
    item = _item_tag(0xE000, 0xFFFFFFFF, syntax)
    assert seq + item + seq + item in plain
    assert plain.index(seq) < plain.index(struct.pack(syntax.order + "HH", 0x0008, 0x0016))

    found = scan_header(_encode(ds, syntax), syntax.uid)

    assert found == _reference(plain, syntax)
    assert found[0x00080016] == CTImageStorage.encode() + b"\x00"
    assert found[0x00080018] == b"1.2.826.0.1.3680043.8.498.1\x00"
    assert found[0x0020000D] == b"1.2.826.0.1.3680043.8.498.2\x00"
    assert found[0x0020000E] == b"1.2.826.0.1.3680043.8.498.33"
    assert found[0x00081030] == "CT ngực liều thấp".encode() + b" "


@pytest.mark.parametrize("syntax", UNCOMPRESSED, ids=lambda s: s.uid)
def test_wanted_tags_only_inside_a_sequence_are_not_reported(syntax: Syntax) -> None:
    ds = _with_nested_sequences(_ct())
    del ds.StudyDescription  # only in the nested item now
    del ds.SOPClassUID

    found = scan_header(_plain(ds, syntax), syntax.uid)

    assert 0x00081030 not in found
    assert 0x00080016 not in found
    assert found[0x00080018] == b"1.2.826.0.1.3680043.8.498.1\x00"  # the top-level one, not "1.2.3.4.5"
    assert found[0x0020000E] == b"1.2.826.0.1.3680043.8.498.33"


@pytest.mark.parametrize("syntax", UNCOMPRESSED, ids=lambda s: s.uid)
def test_defined_length_sequences_and_long_values_are_skipped(syntax: Syntax) -> None:
    ds = _ct()
    ds.LanguageCodeSequence = Sequence([_code_item("eng", undefined=False), _code_item("vie", undefined=True)])
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "OB", bytes(range(256)) * 300)  # longer than a 16-bit length
    ds.add_new(0x00091002, "UT", "x" * 70_000)
    if syntax.little:  # encapsulated pixel data exists only in little endian
        icon = Dataset()  # an item holding encapsulated (undefined-length) pixel data
        icon.Rows = 1
        icon.PixelData = encapsulate([b"\x01\x02\x03\x04", b"\x05\x06"])
        icon["PixelData"].VR = "OB"
        icon["PixelData"].is_undefined_length = True
        icon.is_undefined_length_sequence_item = True
        ds.add_new(CODING_SCHEME_IDENTIFICATION_SEQUENCE, "SQ", Sequence([icon]))
        ds[CODING_SCHEME_IDENTIFICATION_SEQUENCE].is_undefined_length = True
    plain = _plain(ds, syntax)

    found = scan_header(plain, syntax.uid)

    assert found == _reference(plain, syntax)
    assert set(found) == set(WANTED)


@pytest.mark.parametrize("syntax", ALL_SYNTAXES, ids=lambda s: s.uid)
def test_no_pixel_data_and_absent_tags(syntax: Syntax) -> None:
    ds = _ct()
    for elem in list(ds):
        if elem.tag > 0x0020000D:  # no pixel data; the data set ends before the last wanted tag
            del ds[elem.tag]
    del ds.AccessionNumber
    del ds.SpecificCharacterSet
    ds.PatientName = "Doe^Jane"  # ISO 646 without (0008,0005)
    ds.StudyDescription = "Low dose chest CT"
    ds.SeriesDescription = ""  # present, empty
    assert "PixelData" not in ds
    plain = _plain(ds, syntax)

    found = scan_header(_encode(ds, syntax), syntax.uid)

    assert found == _reference(plain, syntax)
    assert 0x0020000E not in found
    assert 0x00080050 not in found
    assert 0x00080005 not in found
    assert found[0x0008103E] == b""
    assert found[0x0020000D] == b"1.2.826.0.1.3680043.8.498.2\x00"
    assert set(found) == set(WANTED) - {0x0020000E, 0x00080050, 0x00080005}


@pytest.mark.parametrize("syntax", ALL_SYNTAXES, ids=lambda s: s.uid)
def test_empty_data_set(syntax: Syntax) -> None:
    assert scan_header(_encode(Dataset(), syntax), syntax.uid) == {}


def _header_only(syntax: Syntax) -> bytes:
    """The CT data set up to and including (0020,000E)."""
    ds = _ct()
    for elem in list(ds):
        if elem.tag > SERIES_INSTANCE_UID:
            del ds[elem.tag]
    return _plain(ds, syntax)


GARBAGE = b"\xff" * (1 << 20)


@pytest.mark.parametrize("syntax", UNCOMPRESSED, ids=lambda s: s.uid)
def test_stops_at_the_first_tag_past_the_last_wanted_one(syntax: Syntax) -> None:
    prefix = _header_only(syntax)
    expected = _reference(prefix, syntax)
    assert set(expected) == set(WANTED)
    tag = struct.pack(syntax.order + "HH", ROWS >> 16, ROWS & 0xFFFF)
    if syntax.implicit:
        rows = tag + struct.pack("<L", 2) + b"\x10\x00"
        past_the_end = tag + struct.pack("<L", 0xFFFFFFF0)
    else:
        rows = tag + b"US" + struct.pack(syntax.order + "HH", 2, 16)
        past_the_end = tag + b"OB\x00\x00" + struct.pack(syntax.order + "L", 0xFFFFFFF0)
    # that element claims more bytes than there are: one the scanner must read through fails
    before_the_last = struct.pack(syntax.order + "HH", 0x0010, 0x1000) + past_the_end[4:]
    with pytest.raises(HeaderError, match="runs past the end"):
        scan_header(before_the_last + GARBAGE + prefix, syntax.uid)

    assert scan_header(prefix + GARBAGE + rows, syntax.uid) == expected
    assert scan_header(prefix + rows + GARBAGE, syntax.uid) == expected
    assert scan_header(prefix + past_the_end + GARBAGE, syntax.uid) == expected


def test_stops_early_in_a_deflated_data_set() -> None:
    prefix = _header_only(EXPLICIT_LE)
    rows = struct.pack("<HH", 0x0028, 0x0010) + b"OB\x00\x00" + struct.pack("<L", 0xFFFFFFF0)
    found = scan_header(_deflate(prefix + rows + GARBAGE), DeflatedExplicitVRLittleEndian)
    assert found == _reference(prefix, EXPLICIT_LE)
    assert set(found) == set(WANTED)


def _offset(plain: bytes, tag: int, syntax: Syntax) -> int:
    return plain.index(struct.pack(syntax.order + "HH", tag >> 16, tag & 0xFFFF))


@pytest.mark.parametrize("syntax", UNCOMPRESSED, ids=lambda s: s.uid)
def test_a_partial_scan_says_whether_the_first_bytes_were_enough(syntax: Syntax) -> None:
    """The gateway reads the header from a data set's first bytes (its first P-DATA fragments)."""
    plain = _plain(_ct(), syntax)
    expected = scan_header(plain, syntax.uid)
    past_the_last = len(_header_only(syntax))  # where the first element after (0020,000E) starts
    assert scan_header(plain[:past_the_last + 8], syntax.uid, partial=True) == expected
    assert scan_header(plain[:past_the_last + 4096], syntax.uid, partial=True) == expected
    # ending before any element past the wanted ones: more of them may follow
    assert scan_header(plain[:past_the_last], syntax.uid, partial=True) is None
    assert scan_header(plain[:_offset(plain, 0x00100010, syntax)], syntax.uid, partial=True) is None
    # ending inside an element: the caller reads on
    with pytest.raises(HeaderError):
        scan_header(plain[:_offset(plain, 0x00100010, syntax) + 5], syntax.uid, partial=True)


def test_a_partial_scan_of_a_deflated_data_set() -> None:
    plain = _plain(_ct(), EXPLICIT_LE)
    deflated = _deflate(plain)
    expected = scan_header(deflated, DeflatedExplicitVRLittleEndian)
    assert set(expected) == set(WANTED)
    assert scan_header(deflated[:len(deflated) // 2], DeflatedExplicitVRLittleEndian, partial=True) == expected
    assert scan_header(deflated[:16], DeflatedExplicitVRLittleEndian, partial=True) is None


@pytest.mark.parametrize("syntax", UNCOMPRESSED, ids=lambda s: s.uid)
def test_truncated_inside_an_element_header(syntax: Syntax) -> None:
    plain = _plain(_ct(), syntax)
    at = _offset(plain, 0x00080018, syntax)
    for cut in (at + 1, at + 5, at + 7):
        with pytest.raises(HeaderError, match="ends inside an element header"):
            scan_header(plain[:cut], syntax.uid)


def test_truncated_inside_a_long_explicit_header() -> None:
    with pytest.raises(HeaderError, match="ends inside an element header"):
        scan_header(b"\x08\x00\x06\x00SQ\x00\x00\xff\xff", ExplicitVRLittleEndian)  # 10 of its 12 bytes


@pytest.mark.parametrize("syntax", UNCOMPRESSED, ids=lambda s: s.uid)
def test_length_running_past_the_end(syntax: Syntax) -> None:
    plain = _plain(_ct(), syntax)
    value = _offset(plain, 0x00080018, syntax) + 8  # SOP Instance UID: a short header in every syntax
    end = value + len(b"1.2.826.0.1.3680043.8.498.1\x00")
    with pytest.raises(HeaderError, match="runs past the end"):
        scan_header(plain[:end - 1], syntax.uid)  # one byte short
    assert scan_header(plain[:end], syntax.uid)[0x00080018] == b"1.2.826.0.1.3680043.8.498.1\x00"
    # the same for an element the scanner only skips
    plain = _plain(_with_nested_sequences(_ct()), syntax)
    item = plain.index(_item_tag(0xE000, 0xFFFFFFFF, syntax))
    bad = plain[:item + 4] + struct.pack(syntax.order + "L", len(plain)) + plain[item + 8:]
    with pytest.raises(HeaderError, match="runs past the end"):
        scan_header(bad, syntax.uid)


def test_undefined_length_on_a_wanted_tag() -> None:
    with pytest.raises(HeaderError, match=r"\(0008,0016\) has an undefined length"):
        scan_header(b"\x08\x00\x16\x00SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00",
                    ExplicitVRLittleEndian)
    implicit = (struct.pack("<HHL", 0x0008, 0x0018, 0xFFFFFFFF) + _item_tag(0xE0DD, 0, IMPLICIT_LE))
    with pytest.raises(HeaderError, match=r"\(0008,0018\) has an undefined length"):
        scan_header(implicit, ImplicitVRLittleEndian)


def test_an_item_running_past_the_end() -> None:
    # the same bytes as above, but on a tag that is only skipped: its item claims 16 bytes that are not there
    with pytest.raises(HeaderError, match="runs past the end"):
        scan_header(b"\x08\x00\x06\x00SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00",
                    ExplicitVRLittleEndian)


@pytest.mark.parametrize("syntax", UNCOMPRESSED, ids=lambda s: s.uid)
def test_sequence_holding_a_non_item(syntax: Syntax) -> None:
    code_value = struct.pack(syntax.order + "HH", 0x0008, 0x0100)
    code_value += struct.pack("<L", 4) if syntax.implicit else b"SH" + struct.pack(syntax.order + "H", 4)
    data = _undefined_sequence_header(LANGUAGE_CODE_SEQUENCE, syntax) + code_value + b"eng "
    data += _item_tag(0xE0DD, 0, syntax) + _plain(_ct(), syntax)
    with pytest.raises(HeaderError, match="something other than items"):
        scan_header(data, syntax.uid)


@pytest.mark.parametrize("syntax", UNCOMPRESSED, ids=lambda s: s.uid)
def test_sequence_never_closed(syntax: Syntax) -> None:
    plain = _plain(_with_nested_sequences(_ct()), syntax)
    end = plain.index(_item_tag(0xE00D, 0, syntax))  # the first Item Delimitation Item
    with pytest.raises(HeaderError):
        scan_header(plain[:end], syntax.uid)


def _nested(levels: int) -> Dataset:
    """A data set whose (0008,0006) nests ``levels`` sequences of undefined length (items too)."""
    ds = _ct()
    holder = ds
    for level in range(levels):
        item = _code_item(f"l{level}", undefined=True)
        holder.LanguageCodeSequence = Sequence([item])
        holder["LanguageCodeSequence"].is_undefined_length = True
        holder = item
    return ds


@pytest.mark.parametrize("syntax", UNCOMPRESSED, ids=lambda s: s.uid)
def test_nesting_limit(syntax: Syntax) -> None:
    # the top-level sequence is depth 0: _MAX_DEPTH + 1 nested sequences are the most it reads
    deepest = _plain(_nested(_MAX_DEPTH + 1), syntax)
    found = scan_header(deepest, syntax.uid)
    assert found == _reference(deepest, syntax)
    assert set(found) == set(WANTED)

    too_deep = _plain(_nested(_MAX_DEPTH + 2), syntax)
    assert read_dataset(BytesIO(too_deep), syntax.implicit, syntax.little).SOPInstanceUID  # valid
    with pytest.raises(HeaderError, match="nested too deeply"):
        scan_header(too_deep, syntax.uid)
    with pytest.raises(HeaderError, match="nested too deeply"):
        scan_header(_plain(_nested(200), syntax), syntax.uid)


@pytest.mark.parametrize(
    "corrupt",
    [
        b"\xff" * 64,  # invalid block type
        b"\x78\x9c" + b"x" * 40,  # a zlib header where raw deflate is due: invalid stored block lengths
        b"\x06" + bytes(30),  # reserved block type 3
    ],
)
def test_corrupt_deflate_data(corrupt: bytes) -> None:
    with pytest.raises(HeaderError, match="cannot be inflated") as info:
        scan_header(corrupt, DeflatedExplicitVRLittleEndian)
    assert isinstance(info.value.__cause__, zlib.error)


def test_a_flipped_byte_in_a_deflated_data_set() -> None:
    deflated = bytearray(_deflate(_plain(_ct(), EXPLICIT_LE)))
    deflated[0] ^= 0x06  # the first block's type becomes the reserved 3 (or 1 -> 2 with other tables)
    with pytest.raises(HeaderError):
        scan_header(bytes(deflated), DeflatedExplicitVRLittleEndian)


def _un_private_sequence(syntax: Syntax) -> bytes:
    """A private creator and a private sequence of VR UN and undefined length, whose items are
    encoded in Implicit VR Little Endian whatever the transfer syntax (PS3.5 6.2.2): what a
    converter writes for a private sequence whose VR it does not know."""
    item = struct.pack("<HHL", 0x0009, 0x0010, 4) + b"ACME" + struct.pack("<HHL", 0x0009, 0x1002, 4) + b"ABC "
    order = syntax.order
    return (struct.pack(order + "HH", 0x0009, 0x0010) + b"LO" + struct.pack(order + "H", 4) + b"ACME"
            + struct.pack(order + "HH", 0x0009, 0x1001) + b"UN\x00\x00\xff\xff\xff\xff"
            + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + item
            + struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))


def test_un_sequence_of_undefined_length() -> None:
    plain = _plain(_ct(), EXPLICIT_LE)
    at = _offset(plain, 0x00100010, EXPLICIT_LE)
    data = plain[:at] + _un_private_sequence(EXPLICIT_LE) + plain[at:]
    # pydicom reads it (the UN element as a sequence) and finds everything
    ds = read_dataset(BytesIO(data), False, True)
    assert ds[0x00091001].VR == "SQ"
    assert ds[0x00091001].value[0][0x00091002].value == b"ABC "
    assert str(ds.PatientName) == "Nguyễn^Văn An"

    found = scan_header(data, ExplicitVRLittleEndian)

    assert found == _reference(data, EXPLICIT_LE)
    assert set(found) == set(WANTED)


def test_transfer_syntax_properties_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """scan_header looks a transfer syntax up once per process (pydicom's UID runs a regular
    expression every time one is made)."""
    made: list[str] = []
    real_uid = header_mod.UID

    def counting_uid(value: str) -> UID:
        made.append(value)
        return real_uid(value)

    header_mod._encoding.cache_clear()
    monkeypatch.setattr(header_mod, "UID", counting_uid)
    data = encode_le(make_ct_dataset(seed=3))
    first = scan_header(data, ExplicitVRLittleEndian)
    for _ in range(5):
        assert scan_header(data, ExplicitVRLittleEndian) == first
    assert made == [ExplicitVRLittleEndian]
    header_mod._encoding.cache_clear()
