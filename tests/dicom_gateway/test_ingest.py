"""The ingest path takes a data set in the pieces it arrived in (P-DATA fragments) and reads its
header from the first of them, from all of them only when the first bytes are not enough."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_gateway import status as st
from dicom_gateway.ingest import Ingestor, IngestRefused, Origin
from dicom_gateway.spool import Spool
from tests.dicom_gateway.gateway_helpers import RecordingSink, encode_le, make_ct_dataset

ORIGIN = Origin(calling_ae_title="CT1", called_ae_title="TAMSOAT", peer_address="127.0.0.1")


def _pieces(data: bytes, size: int) -> list[memoryview]:
    view = memoryview(bytearray(data))  # writable buffers, as the acceptor's PDU bodies are
    return [view[i:i + size] for i in range(0, len(data), size)]


def _ingestor(tmp_path: Path) -> tuple[Ingestor, RecordingSink]:
    sink = RecordingSink()
    return Ingestor(Spool(tmp_path / "spool", fsync=False), sink), sink


@pytest.mark.parametrize("piece", [1, 100, 70_000])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_fragments_are_stored_exactly_as_the_whole(tmp_path: Path, piece: int, syntax: str) -> None:
    ds = make_ct_dataset(seed=3, size=256)  # 128 KB of pixel data: over the 64 KB header prefix
    data = encode_le(ds, implicit=syntax == ImplicitVRLittleEndian)
    ingestor, sink = _ingestor(tmp_path)
    stored = ingestor.ingest(_pieces(data, piece), syntax, ORIGIN, expected_sop_class=CTImageStorage,
                             expected_sop_instance=ds.SOPInstanceUID)
    assert (stored.sop_instance_uid, stored.study_instance_uid, stored.series_instance_uid) == (
        ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert stored.attributes["PatientID"] == ds.PatientID and stored.attributes["Modality"] == "CT"
    on_disk = (tmp_path / "spool" / stored.path).read_bytes()
    assert on_disk.endswith(data) and len(on_disk) == stored.size
    assert sink.instances == [stored]


def test_a_header_longer_than_the_prefix_is_read_from_the_whole(tmp_path: Path) -> None:
    """A long sequence before the UIDs pushes them past the first 64 KB."""
    ds = make_ct_dataset(seed=4)
    items = []
    for i in range(2000):
        item = Dataset()
        item.CodeValue = f"L{i:05d}"
        item.CodingSchemeDesignator = "RFC5646"
        item.CodeMeaning = "a language, to make the sequence long"
        items.append(item)
    ds.LanguageCodeSequence = Sequence(items)  # (0008,0006): before (0008,0016) SOP Class UID
    data = encode_le(ds)
    assert data.index(ds.SOPInstanceUID.encode()) > 64 * 1024
    ingestor, _ = _ingestor(tmp_path)
    stored = ingestor.ingest(_pieces(data, 16_384), ExplicitVRLittleEndian, ORIGIN)
    assert stored.sop_instance_uid == ds.SOPInstanceUID and stored.study_instance_uid == ds.StudyInstanceUID


def test_a_header_cut_short_is_refused(tmp_path: Path) -> None:
    data = encode_le(make_ct_dataset(seed=5, size=256))
    cut = data[:data.index(b"\x10\x00\x20\x00") + 5]  # inside (0010,0020) Patient ID
    ingestor, sink = _ingestor(tmp_path)
    with pytest.raises(IngestRefused) as refused:
        ingestor.ingest(_pieces(cut, 100), ExplicitVRLittleEndian, ORIGIN)
    assert refused.value.status == st.UNDECODABLE
    assert sink.instances == []
