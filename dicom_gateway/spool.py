"""The durable spool: received instances as DICOM Part-10 files on local (or shared) disk.

Layout under ``root``::

    <StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm        version 1
    <StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.v2.dcm     version 2 (other content)
    .index/<xx>/<SOPInstanceUID>                                       versions of one SOP Instance UID

Every file is written to a temporary name in its target directory, fsynced, renamed into place
and the directory fsynced before :meth:`Spool.store` returns; a final name never holds a partial
file. The per-SOP index (replaced atomically) lists the versions already stored, so a re-sent
instance is recognised as a duplicate (same content) or stored as a new version (other content),
even when it arrives under another study or series.

The index is a cache of what the data files say, so it is written without fsync (two fsyncs per
instance instead of four). If it is lost or stale (a power failure after the data file was made
durable), the files still win: before a version is written, an existing file at its name that the
index does not list is hashed; the same content is a duplicate, other content keeps its file and
the new data becomes the next version. An acknowledged file is therefore never overwritten.

Content identity is the SHA-256 of the data set bytes exactly as received (without the File Meta
Information, which we write ourselves), so the same instance re-sent by another AE is still a
duplicate. When no other store is in progress it is computed in another thread while the file is
written and fsynced: a new SOP Instance UID needs it only for its index entry, after the write
(~0.25 ms of a 525 KB instance's critical path that overlaps the disk's).

Concurrency: stores of the same SOP Instance UID are serialised with ``fcntl.flock`` on a per-shard
lock file, which works between threads and between gateway processes sharing the spool.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dicom_gateway.uids import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    validate_uid,
)

__all__ = [
    "Chunk",
    "OutOfResourcesError",
    "Spool",
    "SpoolError",
    "SpoolFullError",
    "SpoolIOError",
    "SpooledFile",
    "part10_header",
    "write_durably",
]

LOG = logging.getLogger(__name__)

Chunk = bytes | bytearray | memoryview
"""A piece of a data set as it arrived (e.g. one P-DATA fragment); a data set is a sequence of them."""

PREAMBLE = b"\x00" * 128 + b"DICM"
TEMP_SUFFIX = ".partial"
INDEX_DIR = ".index"
_FILE_MODE = 0o640
_DIR_MODE = 0o750
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)  # not on macOS
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024  # buffers per call
_SHARDS = tuple(f"{i:02x}" for i in range(256))  # the index's subdirectories: SHA-256(SOP UID)[:2]
_INDEX_LINE = re.compile(
    r"(?P<version>[1-9][0-9]*) (?P<sha256>[0-9a-f]{64}) (?P<size>[0-9]+) (?P<path>[0-9.]+/[0-9.]+/\S+)"
)


class OutOfResourcesError(Exception):
    """A transient lack of local resources (disk, quota, I/O). The SCP answers 0xA7xx so the sender
    retries later. An :data:`~dicom_gateway.scp.InstanceSink` may raise it (or a subclass) too."""


class SpoolError(Exception):
    """Base class of the spool's own errors."""


class SpoolFullError(SpoolError, OutOfResourcesError):
    """The spool's file system is full or the quota is exhausted (ENOSPC / EDQUOT)."""


class SpoolIOError(SpoolError, OutOfResourcesError):
    """Any other operating-system error while writing to the spool."""


@dataclass(frozen=True)
class SpooledFile:
    """The result of :meth:`Spool.store`.

    ``sha256`` is over the data set bytes as received (content identity); ``size`` is the size of
    the Part-10 file on disk; ``version`` is 1 for the first content seen for this SOP Instance UID.
    """

    path_relative: str
    sha256: str
    size: int
    duplicate: bool
    version: int


@dataclass(frozen=True)
class _IndexEntry:
    version: int
    sha256: str
    size: int
    path_relative: str


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group-0002 element, explicit VR little endian."""
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _even(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


_AE_TEXT = re.compile(r"[ -\[\]-~]{1,16}")  # default repertoire, no backslash


def part10_header(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    source_ae_title: str | None = None,
) -> bytes:
    """Preamble, ``DICM`` prefix and the encoded File Meta Information for one instance.

    Encoded by hand (it is on every store's path; pydicom's writer cost ~0.7 ms of CPU per instance);
    byte-identical to ``pydicom.filewriter.write_file_meta_info`` (a test checks). The UIDs are
    validated by the caller.
    """
    elements = [
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _even(sop_class_uid, b"\x00")),
        _meta_element(0x0003, b"UI", _even(sop_instance_uid, b"\x00")),
        _meta_element(0x0010, b"UI", _even(transfer_syntax_uid, b"\x00")),
        _meta_element(0x0012, b"UI", _even(IMPLEMENTATION_CLASS_UID, b"\x00")),
        _meta_element(0x0013, b"SH", _even(IMPLEMENTATION_VERSION_NAME, b" ")),
    ]
    title = (source_ae_title or "").strip()
    if title and _AE_TEXT.fullmatch(title):
        elements.append(_meta_element(0x0016, b"AE", _even(title, b" ")))
    body = b"".join(elements)
    return PREAMBLE + _meta_element(0x0000, b"UL", struct.pack("<I", len(body))) + body


def _write_chunks(fd: int, chunks: Sequence[Chunk]) -> int:
    """Write every byte of ``chunks`` to ``fd``, in order: one system call per ``_IOV_MAX`` chunks
    when the kernel takes them all at once (it may write less than asked). Returns the number of bytes."""
    total = 0
    for start in range(0, len(chunks), _IOV_MAX):
        group = chunks[start:start + _IOV_MAX]
        size = sum(len(c) for c in group)
        done = os.writev(fd, group)
        if done < size:
            view = memoryview(b"".join(group))[done:]
            while view:
                view = view[os.write(fd, view):]
        total += size
    return total


def _fsync_path(path: str, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    _fsync_path(path, os.O_RDONLY | os.O_DIRECTORY)


def _make_dirs(base: str, parts: tuple[str, ...], fsync: bool, fsync_existing: bool = False) -> None:
    """Create ``base/parts...`` level by level, fsyncing each parent that got a new entry; with
    ``fsync_existing`` also the parents of directories that were there already (their entry may be
    one whose fsync failed, by another attempt or before a restart)."""
    current = base
    for part in parts:
        child = os.path.join(current, part)
        created = False
        if not os.path.isdir(child):
            try:
                os.mkdir(child, _DIR_MODE)
                created = True
            except FileExistsError:
                pass
        if fsync and (created or fsync_existing):
            _fsync_dir(current)
        current = child


def _write_atomic(target: str, chunks: Sequence[Chunk], fsync: bool, drop_cached: bool = False) -> int:
    """Write ``chunks`` to ``target`` via a temp file in the same directory, fsync it, rename it
    into place and fsync the directory. Returns the number of bytes written. A failure leaves
    neither the temp file nor anything at ``target`` (an existing ``target`` is kept as it was).
    ``drop_cached`` (with ``fsync``): the file's pages leave the page cache once written."""
    folder, name = os.path.split(target)
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        try:
            size = _write_chunks(fd, chunks)
            if fsync:
                os.fsync(fd)
                if drop_cached and _DONTNEED is not None:
                    os.posix_fadvise(fd, 0, 0, _DONTNEED)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(folder)
    return size


def write_durably(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` the way the spool does (temp file, fsync, rename, fsync dir),
    creating missing parent directories. For files the service produces itself (e.g. reports).

    Raises :class:`SpoolFullError` when the disk is full, :class:`SpoolIOError` on other I/O errors.
    """
    target = Path(path).absolute()
    try:
        missing: list[str] = []
        base = target.parent
        while not base.is_dir():
            missing.insert(0, base.name)
            base = base.parent
        _make_dirs(str(base), tuple(missing), fsync)
        _write_atomic(str(target), (data,), fsync)
    except OSError as exc:
        raise _io_error(exc, f"writing {target.name}") from exc


def _dataset_digest(path: str) -> str | None:
    """SHA-256 of the data set bytes of a Part-10 file the spool wrote, None when there is no file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    offset = 132
    if data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00" and data[136:138] == b"UL":
        offset = 144 + int.from_bytes(data[140:144], "little")
    return hashlib.sha256(data[offset:]).hexdigest()


def _digest(chunks: Sequence[Chunk]) -> str:
    hasher = hashlib.sha256()
    for chunk in chunks:
        hasher.update(chunk)  # releases the GIL for all but the smallest chunks
    return hasher.hexdigest()


_hasher_pool: concurrent.futures.ThreadPoolExecutor | None = None
_hasher_pool_lock = threading.Lock()


def _hashers() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that hash data sets while the storing threads write them (made on first use).
    Two: a spool hashes beside only one store at a time (:func:`_hash`)."""
    global _hasher_pool
    with _hasher_pool_lock:
        if _hasher_pool is None:
            _hasher_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="tamsoat-spool-hash")
        return _hasher_pool


def _hash(chunks: Sequence[Chunk], beside: bool) -> concurrent.futures.Future[str]:
    """The data set's digest: with ``beside``, computed by another thread while the caller writes the
    file; else here and now. Only a store with no other in progress hashes beside: then a core is
    likely idle, while with several the cores are busy and each hand-over to another thread costs
    two context switches (one-off A/B pairs on 2 cores: beside was 1.04-1.09x faster with one
    association, 0.99-1.17x slower with four)."""
    if beside:
        return _hashers().submit(_digest, chunks)
    done: concurrent.futures.Future[str] = concurrent.futures.Future()
    done.set_result(_digest(chunks))
    return done


def _shard(sop: str) -> str:
    return hashlib.sha256(sop.encode("ascii")).hexdigest()[:2]


def _file_name(sop: str, version: int) -> str:
    return f"{sop}.dcm" if version == 1 else f"{sop}.v{version}.dcm"


def _is_full(exc: OSError) -> bool:
    return exc.errno in _FULL_ERRNOS


def _io_error(exc: OSError, what: str) -> SpoolError:
    if _is_full(exc):
        return SpoolFullError(f"spool full while {what}: {os.strerror(exc.errno or 0)}")
    return SpoolIOError(f"spool I/O error while {what}: {exc.strerror or exc}")


class Spool:
    """A durable store of received instances under ``root``.

    ``fsync=False`` skips the fsync calls (tests, throw-away spools); never in production.

    Each data file leaves the page cache once it is durable, unless ``keep_cached``: a received file
    is read once, by inference, seconds or hours later, so keeping it only crowds out what is read
    often, and a gateway receiving all day would fill the memory with them. Pages just freed are
    also the cheapest to write the next instance into (on this project's virtual machines, writing
    into newly allocated pages cost ~1.5 ms per 525 KB instance, into just-freed ones ~0.3 ms).
    """

    def __init__(self, root: Path, fsync: bool = True, keep_cached: bool = False) -> None:
        self.root = Path(root).resolve()
        self.fsync = fsync
        self.drop_cached = not keep_cached
        self.root.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
        self._base = str(self.root)
        self._dirs: set[str] = set()
        self._dirs_lock = threading.Lock()
        self._storing = 0  # stores in progress in this process
        self._storing_lock = threading.Lock()
        self._make_shards()

    # -- public API -------------------------------------------------------------------------------
    def store(
        self,
        chunks: Sequence[Chunk],
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        study_instance_uid: str,
        series_instance_uid: str,
        transfer_syntax_uid: str,
        source_ae_title: str | None = None,
    ) -> SpooledFile:
        """Store one data set, ``chunks`` being its bytes exactly as received in
        ``transfer_syntax_uid`` (in pieces as they arrived, or one piece).

        Returns once the file (and its index entry) is durable. Raises
        :class:`~dicom_gateway.uids.InvalidUIDError` for a malformed UID (nothing is written),
        :class:`SpoolFullError` when the disk is full and :class:`SpoolIOError` on other I/O errors.
        """
        sop_class = validate_uid(sop_class_uid, "SOPClassUID")
        sop = validate_uid(sop_instance_uid, "SOPInstanceUID")
        study = validate_uid(study_instance_uid, "StudyInstanceUID")
        series = validate_uid(series_instance_uid, "SeriesInstanceUID")
        tsyntax = validate_uid(transfer_syntax_uid, "TransferSyntaxUID")

        with self._storing_lock:
            self._storing += 1
            alone = self._storing == 1
        try:
            hashing = _hash(chunks, beside=alone)
            try:
                return self._store(chunks, hashing, sop_class, sop, study, series, tsyntax, source_ae_title)
            finally:
                hashing.cancel()
                concurrent.futures.wait((hashing,))  # never leave a thread reading the caller's buffers
        finally:
            with self._storing_lock:
                self._storing -= 1

    def _store(
        self,
        chunks: Sequence[Chunk],
        hashing: concurrent.futures.Future[str],
        sop_class: str,
        sop: str,
        study: str,
        series: str,
        tsyntax: str,
        source_ae_title: str | None,
    ) -> SpooledFile:
        header = part10_header(
            sop_class_uid=sop_class,
            sop_instance_uid=sop,
            transfer_syntax_uid=tsyntax,
            source_ae_title=source_ae_title,
        )
        content = (header, *chunks)
        shard = _shard(sop)
        index_dir = f"{self._base}/{INDEX_DIR}/{shard}"
        series_parts = (study, series)

        try:
            self._ensure_dirs((INDEX_DIR, shard))
            with self._locked(index_dir):
                entries = self._read_index(index_dir, sop)
                digest = hashing.result() if entries else ""  # "": not needed yet (a new SOP Instance UID)
                for entry in entries:
                    if entry.sha256 == digest:
                        target = f"{self._base}/{entry.path_relative}"
                        if not os.path.isfile(target):
                            # Known content whose file was removed: put it back where it was.
                            _make_dirs(self._base, tuple(entry.path_relative.split("/")[:-1]), self.fsync)
                            _write_atomic(target, content, self.fsync, self.drop_cached)
                        LOG.info("spool.duplicate sop=%s version=%d", sop, entry.version)
                        return SpooledFile(entry.path_relative, digest, entry.size, True, entry.version)

                version = max((e.version for e in entries), default=0) + 1
                self._ensure_dirs(series_parts)
                while True:
                    rel = f"{study}/{series}/{_file_name(sop, version)}"
                    target = f"{self._base}/{rel}"
                    found = _dataset_digest(target)
                    if found is None:
                        break
                    digest = digest or hashing.result()
                    # A file the index does not list (the index was lost): the file wins.
                    entries.append(_IndexEntry(version, found, os.stat(target).st_size, rel))
                    if found == digest:
                        if self.fsync:
                            # Maybe left by an attempt whose directory fsync failed (that attempt was
                            # refused): make it durable before it is acknowledged as a duplicate.
                            _fsync_path(target)
                            _fsync_dir(os.path.dirname(target))
                        self._write_index(index_dir, sop, entries)
                        LOG.warning("spool.reindexed sop=%s version=%d", sop, version)
                        return SpooledFile(rel, digest, entries[-1].size, True, version)
                    version += 1
                try:
                    size = _write_atomic(target, content, self.fsync, self.drop_cached)
                except FileNotFoundError:  # a directory was removed behind our back: make it again
                    self._dirs.clear()
                    self._ensure_dirs(series_parts)
                    size = _write_atomic(target, content, self.fsync, self.drop_cached)
                digest = digest or hashing.result()
                entries.append(_IndexEntry(version, digest, size, rel))
                self._write_index(index_dir, sop, entries)
        except OSError as exc:
            raise _io_error(exc, f"storing sop={sop}") from exc

        if version > 1:
            LOG.warning("spool.new_version sop=%s version=%d", sop, version)
        return SpooledFile(rel, digest, size, False, version)

    def recover(self, older_than_s: float = 0.0) -> int:
        """Remove temporary files left by an interrupted store; return how many were removed.

        Call at start-up before serving. On a spool shared by several gateways pass
        ``older_than_s`` (e.g. 3600) so another instance's in-flight files are left alone.
        """
        removed = 0
        cutoff = time.time() - older_than_s
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for fname in filenames:
                if not (fname.startswith(".") and fname.endswith(TEMP_SUFFIX)):
                    continue
                path = Path(dirpath) / fname
                try:
                    if older_than_s > 0 and path.stat().st_mtime > cutoff:
                        continue
                    path.unlink()
                    removed += 1
                except FileNotFoundError:
                    continue
        if removed:
            LOG.warning("spool.recovered temp_files_removed=%d", removed)
        return removed

    def path(self, path_relative: str) -> Path:
        """The absolute path of a stored file; refuses anything that leaves the spool root."""
        candidate = (self.root / path_relative).resolve()
        if not candidate.is_relative_to(self.root) or candidate == self.root:
            raise ValueError("path is outside the spool")
        return candidate

    def versions(self, sop_instance_uid: str) -> list[SpooledFile]:
        """Every stored version of one SOP Instance UID, oldest first (from the index)."""
        sop = validate_uid(sop_instance_uid, "SOPInstanceUID")
        entries = self._read_index(f"{self._base}/{INDEX_DIR}/{_shard(sop)}", sop)
        return [SpooledFile(e.path_relative, e.sha256, e.size, False, e.version) for e in entries]

    # -- internals --------------------------------------------------------------------------------
    def _make_shards(self) -> None:
        """Create the index's 256 shard directories up front (one fsync of their parent for all),
        so that no store pays for making one. Left to the stores when the disk refuses (e.g. full)."""
        try:
            _make_dirs(self._base, (INDEX_DIR,), self.fsync, fsync_existing=True)
            index = f"{self._base}/{INDEX_DIR}"
            for shard in _SHARDS:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(f"{index}/{shard}", _DIR_MODE)
            if self.fsync:
                _fsync_dir(index)
        except OSError as exc:
            LOG.warning("spool.shards_deferred error=%s", exc.strerror or type(exc).__name__)
            return
        self._dirs.update(f"{INDEX_DIR}/{shard}" for shard in _SHARDS)

    @contextmanager
    def _locked(self, index_dir: str) -> Iterator[None]:
        fd = os.open(f"{index_dir}/.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @staticmethod
    def _read_index(index_dir: str, sop: str) -> list[_IndexEntry]:
        try:
            with open(f"{index_dir}/{sop}", "rb") as f:
                text = f.read().decode("ascii", errors="replace")
        except FileNotFoundError:
            return []
        entries = []
        for line in text.split("\n")[:-1]:  # a last line without its newline was cut short: ignored
            m = _INDEX_LINE.fullmatch(line)
            if m is None:
                continue
            version, rel = int(m["version"]), m["path"]
            if not rel.endswith(f"/{_file_name(sop, version)}"):
                continue
            entries.append(_IndexEntry(version, m["sha256"], int(m["size"]), rel))
        return entries

    def _write_index(self, index_dir: str, sop: str, entries: list[_IndexEntry]) -> None:
        # No fsync: the index is a cache of the data files (see the module docstring). A new SOP's
        # index is written in place (one file creation instead of two, and no rename): a write cut
        # short leaves a line that _read_index ignores, and the data files then decide.
        path = f"{index_dir}/{sop}"
        text = "".join(f"{e.version} {e.sha256} {e.size} {e.path_relative}\n" for e in entries).encode("ascii")
        if len(entries) == 1:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
            except FileExistsError:
                pass
            else:
                try:
                    _write_chunks(fd, (text,))
                except BaseException:
                    os.close(fd)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    raise
                os.close(fd)
                return
        _write_atomic(path, (text,), False)

    def _ensure_dirs(self, parts: tuple[str, ...]) -> None:
        """``_make_dirs`` under the root, remembering which directories exist (saves syscalls)."""
        key = "/".join(parts)
        if key in self._dirs:
            return
        _make_dirs(self._base, parts, self.fsync, fsync_existing=True)  # once per directory and process
        with self._dirs_lock:
            if len(self._dirs) > 100_000:
                self._dirs.clear()
            self._dirs.add(key)
