"""The durable spool: layout, atomic writes, duplicates, versions, UID safety, disk full, recovery."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

import dicom_gateway.spool as spool_mod
from dicom_gateway.spool import TEMP_SUFFIX, Spool, SpoolFullError, SpoolIOError
from dicom_gateway.uids import InvalidUIDError
from tests.dicom_gateway.gateway_helpers import dataset_bytes, encode_le, make_ct_dataset


def encode(seed: int = 0, *, study_uid: str | None = None, series_uid: str | None = None,
           sop_uid: str | None = None) -> tuple[bytes, dict[str, str]]:
    ds = make_ct_dataset(seed=seed, study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    uids = {
        "sop_class_uid": CTImageStorage,
        "sop_instance_uid": ds.SOPInstanceUID,
        "study_instance_uid": ds.StudyInstanceUID,
        "series_instance_uid": ds.SeriesInstanceUID,
        "transfer_syntax_uid": ExplicitVRLittleEndian,
    }
    return encode_le(ds), uids


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def temp_files(root: Path) -> list[Path]:
    return [p for p in all_files(root) if p.name.endswith(TEMP_SUFFIX)]


def test_store_writes_part10_with_dataset_as_received(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    data, uids = encode()
    result = spool.store((data,), source_ae_title="MODALITY", **uids)

    assert result.path_relative == (
        f"{uids['study_instance_uid']}/{uids['series_instance_uid']}/{uids['sop_instance_uid']}.dcm"
    )
    assert result.version == 1 and not result.duplicate
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    path = spool.path(result.path_relative)
    raw = path.read_bytes()
    assert raw[:128] == b"\x00" * 128 and raw[128:132] == b"DICM"
    assert dataset_bytes(path) == data
    assert result.size == len(raw)
    ds = dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == uids["sop_instance_uid"]
    assert ds.file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert ds.SOPInstanceUID == uids["sop_instance_uid"]
    assert temp_files(spool.root) == []


def test_duplicate_same_content_is_not_rewritten(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    data, uids = encode()
    first = spool.store((data,), **uids)
    path = spool.path(first.path_relative)
    mtime = path.stat().st_mtime_ns
    second = spool.store((data,), source_ae_title="OTHER", **uids)
    assert second.duplicate and second.version == 1
    assert second.path_relative == first.path_relative
    assert path.stat().st_mtime_ns == mtime
    dcm_files = [p for p in all_files(spool.root) if p.suffix == ".dcm"]
    assert dcm_files == [path]


def test_same_uid_other_content_is_a_new_version(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    data1, uids = encode(seed=1)
    data2, _ = encode(
        seed=2,
        sop_uid=uids["sop_instance_uid"],
        study_uid=uids["study_instance_uid"],
        series_uid=uids["series_instance_uid"],
    )
    assert data1 != data2
    first = spool.store((data1,), **uids)
    second = spool.store((data2,), **uids)
    assert not second.duplicate and second.version == 2
    assert second.path_relative.endswith(f"{uids['sop_instance_uid']}.v2.dcm")
    assert dataset_bytes(spool.path(first.path_relative)) == data1
    assert dataset_bytes(spool.path(second.path_relative)) == data2
    # Re-sending either content again is a duplicate of its own version.
    assert spool.store((data1,), **uids).version == 1
    again = spool.store((data2,), **uids)
    assert again.duplicate and again.version == 2
    assert [v.version for v in spool.versions(uids["sop_instance_uid"])] == [1, 2]


def test_versions_are_per_sop_uid_across_studies(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    data1, uids = encode(seed=1)
    spool.store((data1,), **uids)
    data2, uids2 = encode(seed=2, sop_uid=uids["sop_instance_uid"])  # same SOP UID, new study
    result = spool.store((data2,), **uids2)
    assert result.version == 2
    assert result.path_relative.startswith(uids2["study_instance_uid"] + "/")


def test_restores_a_known_version_whose_file_was_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    data, uids = encode()
    first = spool.store((data,), **uids)
    spool.path(first.path_relative).unlink()
    again = spool.store((data,), **uids)
    assert again.duplicate and again.version == 1
    assert dataset_bytes(spool.path(first.path_relative)) == data


@pytest.mark.parametrize(
    "bad",
    ["../../etc", "1.2/../../x", "1.2.3/4", "", "1..2", "1.02", "01.2", ".1.2", "1.2.", "1.2.a", "1" * 65,
     "/1.2", "1.2\\1.3"],
)
def test_invalid_uid_never_becomes_a_path(tmp_path: Path, bad: str) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    data, uids = encode()
    for key in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"):
        with pytest.raises(InvalidUIDError):
            spool.store((data,), **{**uids, key: bad})
    assert all_files(spool.root) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spool"]


def test_path_refuses_to_leave_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    with pytest.raises(ValueError):
        spool.path("../outside.dcm")
    with pytest.raises(ValueError):
        spool.path("/etc/passwd")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_raises_spool_full_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    data, uids = encode()

    def full(fd: int, chunks: tuple[bytes, ...]) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(spool_mod, "_write_chunks", full)
    with pytest.raises(SpoolFullError):
        spool.store((data,), **uids)
    assert [p for p in all_files(spool.root) if p.name != ".lock"] == []
    monkeypatch.undo()
    assert spool.store((data,), **uids).version == 1  # nothing half-recorded in the index


def test_other_io_error_is_spool_io_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    data, uids = encode()

    def broken(fd: int, chunks: tuple[bytes, ...]) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(spool_mod, "_write_chunks", broken)
    with pytest.raises(SpoolIOError):
        spool.store((data,), **uids)
    assert temp_files(spool.root) == []


def test_recover_removes_stale_temp_files_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    data, uids = encode()
    stored = spool.store((data,), **uids)
    target_dir = spool.path(stored.path_relative).parent
    stale = target_dir / f".{uids['sop_instance_uid']}.dcm.0123456789abcdef{TEMP_SUFFIX}"
    stale.write_bytes(b"partial")
    other = target_dir / "keep.txt"
    other.write_text("x")
    assert spool.recover() == 1
    assert not stale.exists() and other.exists()
    assert spool.path(stored.path_relative).is_file()


def test_recover_with_age_keeps_fresh_temp_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    fresh = spool.root / f".x.dcm.00{TEMP_SUFFIX}"
    fresh.write_bytes(b"in flight")
    assert spool.recover(older_than_s=3600) == 0
    assert fresh.exists()


def test_concurrent_stores_of_one_instance_give_one_file(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    spool = Spool(tmp_path / "spool", fsync=False)
    data, uids = encode()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: spool.store((data,), **uids), range(16)))
    assert sum(not r.duplicate for r in results) == 1
    assert {r.version for r in results} == {1}
    assert len([p for p in all_files(spool.root) if p.suffix == ".dcm"]) == 1


def test_new_uids_generated_are_valid() -> None:
    from dicom_gateway.uids import IMPLEMENTATION_CLASS_UID, is_valid_uid

    assert is_valid_uid(IMPLEMENTATION_CLASS_UID)
    assert is_valid_uid(str(generate_uid()))


def test_write_durably_creates_parents_and_replaces_atomically(tmp_path: Path) -> None:
    from dicom_gateway.spool import write_durably

    target = tmp_path / "reports" / "1.2.3" / "sr.dcm"
    write_durably(target, b"first")
    assert target.read_bytes() == b"first"
    write_durably(target, b"second")
    assert target.read_bytes() == b"second"
    assert temp_files(tmp_path) == []


def test_write_durably_disk_full_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicom_gateway.spool import write_durably

    target = tmp_path / "out.dcm"
    write_durably(target, b"old")

    def full(fd: int, chunks: tuple[bytes, ...]) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool_mod, "_write_chunks", full)
    with pytest.raises(SpoolFullError):
        write_durably(target, b"new")
    assert target.read_bytes() == b"old"
    assert temp_files(tmp_path) == []


def test_two_fsyncs_per_new_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data file and its directory are fsynced; the index (a cache) is not, and its 256 shard
    directories were made when the spool opened, so no store makes one."""
    spool = Spool(tmp_path / "spool")
    first, uids = encode(seed=1)
    spool.store((first,), **uids)  # creates the study and series directories (each new one is fsynced too)
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(spool_mod.os, "fsync", fsync)
    series = spool.root / uids["study_instance_uid"] / uids["series_instance_uid"]
    for seed in (2, 3, 4):
        data, more = encode(seed=seed, study_uid=uids["study_instance_uid"], series_uid=uids["series_instance_uid"])
        synced.clear()
        stored = spool.store((data,), **more)
        assert len(synced) == 2
        assert Path(synced[0]).name.endswith(TEMP_SUFFIX) and Path(synced[0]).parent == series
        assert synced[1] == str(series)
        assert (spool.root / stored.path_relative).is_file()


def test_the_index_shards_are_made_once_when_the_spool_opens(tmp_path: Path) -> None:
    Spool(tmp_path / "spool")
    shards = sorted(p.name for p in (tmp_path / "spool" / ".index").iterdir())
    assert shards == [f"{i:02x}" for i in range(256)]
    Spool(tmp_path / "spool")  # opening it again changes nothing
    assert sorted(p.name for p in (tmp_path / "spool" / ".index").iterdir()) == shards


def test_a_data_set_in_many_pieces_is_stored_as_one(tmp_path: Path) -> None:
    """The fragments a data set arrived in are written in order, more of them than one writev takes."""
    data, uids = encode(seed=8)
    pieces = [data[i:i + 1] for i in range(len(data))]
    assert len(pieces) > 1024  # Linux's IOV_MAX
    spool = Spool(tmp_path / "spool", fsync=False)
    stored = spool.store([memoryview(p) for p in pieces], **uids)
    whole = Spool(tmp_path / "whole", fsync=False).store((data,), **uids)
    assert stored.sha256 == whole.sha256 == hashlib.sha256(data).hexdigest()
    assert (spool.root / stored.path_relative).read_bytes() == (tmp_path / "whole" / whole.path_relative).read_bytes()


def _cached_bytes(path: Path) -> int:
    """How much of ``path`` is in the page cache (util-linux fincore)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return int(out.split()[0])


@pytest.mark.parametrize("keep_cached", [False, True])
def test_a_durable_file_leaves_the_page_cache_unless_kept(tmp_path: Path, keep_cached: bool) -> None:
    data, uids = encode(seed=9)
    data += b"\x00" * (1 << 20)  # a megabyte of padding after the pixel data: many pages
    spool = Spool(tmp_path / "spool", keep_cached=keep_cached)
    stored = spool.store((data,), **uids)
    cached = _cached_bytes(spool.root / stored.path_relative)
    if keep_cached:
        assert cached >= len(data)
    else:
        assert cached == 0


def test_failed_directory_fsync_is_redone_before_the_retry_is_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename happened but its directory fsync failed: the store is refused. The retry finds the
    file (a duplicate) and fsyncs file and directory before it may be acknowledged."""
    spool = Spool(tmp_path / "spool")
    data, uids = encode(seed=7)
    real = spool_mod._fsync_dir
    series = spool.root / uids["study_instance_uid"] / uids["series_instance_uid"]
    calls: list[Path] = []

    def failing(path: str) -> None:
        calls.append(Path(path))
        if Path(path) == series and (series / f"{uids['sop_instance_uid']}.dcm").exists():
            raise OSError(errno.EIO, "I/O error")
        real(path)

    monkeypatch.setattr(spool_mod, "_fsync_dir", failing)
    with pytest.raises(SpoolIOError):
        spool.store((data,), **uids)
    def noted(path: str) -> None:
        calls.append(Path(path))
        real(path)

    monkeypatch.setattr(spool_mod, "_fsync_dir", noted)
    calls.clear()
    again = spool.store((data,), **uids)
    assert again.duplicate and again.version == 1
    assert series in calls


def test_lost_index_never_lets_an_acknowledged_file_be_overwritten(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    data, uids = encode(seed=3)
    first = spool.store((data,), **uids)
    index_files = list((spool.root / ".index").rglob(str(uids["sop_instance_uid"])))
    assert len(index_files) == 1
    index_files[0].unlink()  # as if a power failure had lost the (unsynced) index

    again = spool.store((data,), **uids)
    assert again.duplicate and again.version == 1 and again.path_relative == first.path_relative

    index_files[0].unlink()
    other, _ = encode(seed=4, sop_uid=uids["sop_instance_uid"], study_uid=uids["study_instance_uid"],
                      series_uid=uids["series_instance_uid"])
    second = spool.store((other,), **uids)
    assert (second.version, second.duplicate) == (2, False)
    assert dataset_bytes(spool.path(first.path_relative)) == data  # version 1 kept as it was
    assert dataset_bytes(spool.path(second.path_relative)) == other
    assert [v.version for v in spool.versions(uids["sop_instance_uid"])] == [1, 2]


@pytest.mark.parametrize("damage", ["cut_short", "zeros", "foreign_path"])
def test_damaged_index_is_ignored_and_the_files_decide(tmp_path: Path, damage: str) -> None:
    """A new SOP's index is written in place, without a rename: a write cut short (a crash), zeros (a
    power failure before write-back) or an entry naming another SOP's file is not trusted."""
    spool = Spool(tmp_path / "spool", fsync=False)
    data, uids = encode(seed=5)
    first = spool.store((data,), **uids)
    (index,) = (spool.root / ".index").rglob(str(uids["sop_instance_uid"]))
    line = index.read_bytes()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    if damage == "cut_short":
        index.write_bytes(line[: len(line) - 8])  # the path cut, no newline
    elif damage == "zeros":
        index.write_bytes(b"\x00" * len(line))
    else:
        index.write_bytes(line.replace(uids["sop_instance_uid"].encode() + b".dcm", b"1.2.3.dcm"))
    assert spool.versions(uids["sop_instance_uid"]) == []
    again = spool.store((data,), **uids)
    assert again.duplicate and again.version == 1 and again.path_relative == first.path_relative
    assert [v.path_relative for v in spool.versions(uids["sop_instance_uid"])] == [first.path_relative]


def test_index_write_failure_leaves_no_index_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    data, uids = encode(seed=6)
    real = spool_mod._write_chunks

    def index_full(fd: int, chunks: tuple[bytes, ...]) -> int:
        if len(chunks) == 1:  # the index (the data file is header + data set)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, chunks)

    monkeypatch.setattr(spool_mod, "_write_chunks", index_full)
    with pytest.raises(SpoolFullError):
        spool.store((data,), **uids)
    assert list((spool.root / ".index").rglob(str(uids["sop_instance_uid"]))) == []
    monkeypatch.undo()
    stored = spool.store((data,), **uids)  # the data file that made it is found and indexed again
    assert stored.duplicate and stored.version == 1


@pytest.mark.parametrize("source", [None, "", "MODALITY", "CT1", "AE WITH SPACE", "A\\B"])
@pytest.mark.parametrize("sop_uid", ["1.2.3", "1.2.34", generate_uid()])
def test_part10_header_is_what_pydicom_writes(source: str | None, sop_uid: str) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import UID, JPEG2000Lossless

    from dicom_gateway.spool import part10_header
    from dicom_gateway.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

    for syntax in (ExplicitVRLittleEndian, JPEG2000Lossless):
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        meta.MediaStorageSOPClassUID = UID(CTImageStorage)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = UID(syntax)
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        if source and "\\" not in source:
            meta.SourceApplicationEntityTitle = source
        buf = DicomBytesIO()
        buf.is_little_endian = True
        buf.is_implicit_VR = False
        write_file_meta_info(buf, meta, enforce_standard=True)
        ours = part10_header(sop_class_uid=CTImageStorage, sop_instance_uid=sop_uid, transfer_syntax_uid=syntax,
                             source_ae_title=source)
        assert ours == b"\x00" * 128 + b"DICM" + buf.getvalue()


def test_a_spool_opened_on_a_full_disk_makes_its_shards_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    real_mkdir = os.mkdir

    def full(path: str, mode: int = 0o777) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool_mod.os, "mkdir", full)
    spool = Spool(root)  # opens (and says so in the log) rather than failing the service's start
    monkeypatch.setattr(spool_mod.os, "mkdir", real_mkdir)
    data, uids = encode(seed=10)
    stored = spool.store((data,), **uids)
    assert (spool.root / stored.path_relative).is_file()
    assert spool.versions(uids["sop_instance_uid"])[0].sha256 == stored.sha256


def test_the_hash_runs_beside_the_write_and_is_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data set is hashed in another thread while the file is written; store returns its digest
    and, even when the write fails, returns only after that thread has stopped reading the buffers."""
    spool = Spool(tmp_path / "spool", fsync=False)
    data, uids = encode()
    real_digest = spool_mod._digest
    threads: list[str] = []
    finished: list[bool] = []

    def slow_digest(chunks: tuple[bytes, ...]) -> str:
        threads.append(threading.current_thread().name)
        time.sleep(0.2)
        finished.append(True)
        return real_digest(chunks)

    monkeypatch.setattr(spool_mod, "_digest", slow_digest)
    result = spool.store((data,), **uids)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert threads and threads[0].startswith("tamsoat-spool-hash")
    assert spool.versions(uids["sop_instance_uid"])[0].sha256 == result.sha256

    threads.clear()
    finished.clear()
    other, other_uids = encode(seed=1)

    def full(fd: int, chunks: tuple[bytes, ...]) -> int:
        deadline = time.monotonic() + 10
        while not threads and time.monotonic() < deadline:  # fail while the hash is under way
            time.sleep(0.001)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool_mod, "_write_chunks", full)
    with pytest.raises(SpoolFullError):
        spool.store((other,), **other_uids)
    assert threads and finished == [True]  # the hash had ended before store raised


def test_a_store_beside_another_hashes_in_its_own_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a store with no other in progress hands its hash to another thread; one that starts while
    another is storing hashes in its own (the cores are busy then), and both digests are right."""
    spool = Spool(tmp_path / "spool", fsync=False)
    real_digest = spool_mod._digest
    second_hashing = threading.Event()
    hashed_in: dict[int, str] = {}

    def digest(chunks: tuple[bytes, ...]) -> str:
        first = len(hashed_in) == 0
        hashed_in[len(hashed_in)] = threading.current_thread().name
        if first:
            assert second_hashing.wait(10), "the second store never hashed"
        else:
            second_hashing.set()
        return real_digest(chunks)

    monkeypatch.setattr(spool_mod, "_digest", digest)
    (one, one_uids), (two, two_uids) = encode(seed=1), encode(seed=2)
    results = {}

    def store(name: str, data: bytes, uids: dict[str, str]) -> None:
        results[name] = spool.store((data,), **uids)

    first = threading.Thread(target=store, args=("one", one, one_uids), name="store-one")
    first.start()
    while not hashed_in:  # the first store is hashing (beside), so it is in progress
        time.sleep(0.005)
    second = threading.Thread(target=store, args=("two", two, two_uids), name="store-two")
    second.start()
    second.join(10)
    first.join(10)
    assert hashed_in[0].startswith("tamsoat-spool-hash") and hashed_in[1] == "store-two"
    assert results["one"].sha256 == hashlib.sha256(one).hexdigest()
    assert results["two"].sha256 == hashlib.sha256(two).hexdigest()
