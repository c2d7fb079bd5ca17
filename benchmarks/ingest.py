"""Receive and send throughput of the DICOM gateway against DCMTK, on one 300-instance CT series.

    .venv/bin/python benchmarks/ingest.py                    # everything, 3 rounds, medians
    .venv/bin/python benchmarks/ingest.py --rounds 1 --only receive
    .venv/bin/python benchmarks/ingest.py --only breakdown   # receiving's parts added one at a time
    .venv/bin/python benchmarks/ingest.py --only phases      # time in each step of receiving

Receiving: DCMTK ``storescu`` sends the series to
  * DCMTK ``storescp`` (the reference; DCMTK 3.6.7's storescp has no fsync option, so it never
    fsyncs: its files may be lost on power failure although it answered success),
  * the same storescp made durable ("durable"): ``fsync_on_close.c``, built here with the system's
    C compiler and preloaded, fsyncs each file and its directory when storescp closes it, before it
    answers (two of our three durability points; storescp has no database). Left out, with a
    message, when there is no C compiler. A second reference, not the target,
  * no receiver at all ("durable file writes alone"): the same files written by 1 or 4 threads
    straight from memory the way a durable receiver must (temp file, write, fsync, rename, fsync
    directory), with no DICOM and no database: the floor under any durable receiver on this disk,
  * tamsoat's StorageSCP with the service's own sink (the instance row in SQLite, WAL,
    synchronous=FULL) and the spool's fsync ON (temp file, fsync, rename, fsync directory): success
    is answered only once the instance is durable. Also with fsync off, to show what durability costs.
Each with 1 association and with 4 parallel associations (4 storescu processes, a quarter each).
Both sides run with ``TCP_NODELAY=1`` (DCMTK reads it from the environment). Rounds are interleaved
(each round runs DCMTK, durable DCMTK, the file writes alone, then tamsoat with fsync on, then off)
and a ratio is the median of the rounds' own ratios. After every run its files are written back and dropped from the
page cache (``evict``), so every run starts from the same memory; see "the page cache" below.

Sending: tamsoat's SCU (``dicom_gateway.scu.send_files``, one association) vs DCMTK ``storescu``,
both to DCMTK ``storescp``, interleaved the same way.

Prints instances/s and MB/s (data set bytes, 1 MB = 10^6 bytes) and tamsoat/DCMTK ratios.
The series is generated once (training.phantom, 300 x 512 x 512 CT slices) into ``--data``.
"durable store X of Y ms" is the time inside the ingest path (header check, spool write with its
fsyncs, database row and commit) against the wall time per instance and association.

Measured 2026-12-04 (a later session) on the development machine (2 vCPUs, ext4 without a journal
on a virtual disk; this machine was ~1.8x faster for storescp than the day before), ``--rounds 3``,
three runs (the third after hashing beside the write was limited to lone stores):

    DCMTK storescp, 1 assoc (no fsync)      1558 / 1505 / 1455 inst/s
    DCMTK storescp, 1 assoc, durable         675 /  700 /  684 inst/s  (0.46 / 0.51 / 0.47 of plain)
    tamsoat SCP, 1 assoc, fsync on           397 /  397 /  358 inst/s  ratio 0.27 / 0.27 / 0.25,
                                                                       vs durable 0.58 / 0.58 / 0.51
    tamsoat SCP, 1 assoc, fsync off          501 /  498 /  465 inst/s  ratio 0.34 / 0.35 / 0.33
    DCMTK storescp, 4 assoc (no fsync)      1207 / 1173 / 1160 inst/s  (one association at a time)
    DCMTK storescp, 4 assoc, durable         632 /  646 /  632 inst/s
    tamsoat SCP, 4 assoc, fsync on           485 /  483 /  485 inst/s  ratio 0.40 / 0.41 / 0.42,
                                                                       vs durable 0.75 / 0.75 / 0.76
    tamsoat SCP, 4 assoc, fsync off          544 /  540 /  564 inst/s  ratio 0.45 / 0.44 / 0.48
    sending: DCMTK storescu                 1124 / 1147 / 1137 inst/s
    sending: tamsoat send_files             1003 /  943 / 1173 inst/s  ratio 0.92 / 0.96 / 0.81

(A sending ratio is the median of the rounds' own ratios, which spread from 0.6 to 1.3: in the third
run the median rates favour us, 1173 vs 1137, and the median ratio does not.) Sending, 5 rounds per
run, three runs each of the code before and after its PDUs went out as one gathered ``sendmsg``
(one-off A/B script): before 0.86 / 0.98 / 0.83, after 1.05 / 1.08 / 1.07: sending is at parity
with storescu within this machine's noise. One-off A/B pairs of receiving: hashing beside the write,
1 association, 1.04-1.09x; hashing inline when another store is in progress, 4 associations,
1.00-1.09x in eight pairs (both orders).
A fourth run, with the "durable file writes alone" line (1 / 4 associations): storescp 1077 / 1355,
durable storescp 790 / 643, file writes alone 1347 / 1892, tamsoat fsync on 403 / 522: ratio 0.37 /
0.37, vs durable DCMTK 0.56 / 0.81.
(The day before, on the slower machine: storescp 838 / 820, tamsoat 291 / 420, ratios 0.36 / 0.49.)

Where the time goes, receiving. ``--only phases`` times each step of the service's path (fsync on;
per instance, summed over the associations; one run):

                                                   1 assoc    4 assoc
    wall time per instance and association         2.80 ms    8.21 ms
    read a PDU (includes waiting for storescu)     0.56       1.11
    ingest: header, spool, row                     2.04       6.03
      header                                       0.04       0.05
      spool: file and index entry                  1.32       3.87
        write, fsync, rename, fsync dir            0.91       2.34
          write (into the page cache)              0.12       0.27
          fsync (file and directory)               0.65       1.57
        index entry (a new file)                   0.14       0.34
      database: row and commit (WAL fsync)         0.60       2.04
        the row's statements                       0.28       0.53
    send the response                              0.05       0.25

``--only breakdown`` (one association, parts added one at a time, our process's CPU per instance):

    DCMTK storescp                                 1229 inst/s
    acceptor, header, checks (keeps nothing)       1466 inst/s  ratio 1.25  our CPU 0.32 ms/instance
    + spool on tmpfs, no fsync                      781 inst/s  ratio 0.64  our CPU 1.09 ms/instance
    + database row (SQLite on tmpfs)                619 inst/s  ratio 0.52  our CPU 1.41 ms/instance
    + disk, fsync on (the service)                  373 inst/s  ratio 0.30  our CPU 1.96 ms/instance

* the protocol side is faster than storescp: fragments are handed on as views of the PDU buffers
  and never joined; responses (and, sending, a command with its whole data set) go out in one
  gathered ``sendmsg``;
* the spool's SHA-256 (~0.27 ms per 525 KB) runs in another thread while the file is written and
  fsynced; the transfer syntax's properties are looked up once (pydicom's UID ran a regular
  expression per instance, ~5% of the CPU);
* durability is the bulk of it: fsync of the file (~0.5 ms for 525 KB, the disk's bandwidth), of
  its directory (~0.15 ms) and the WAL commit (~0.15-0.3 ms), in series, and slower when four
  associations share the disk. The "durable file writes alone" line (temp file, write, fsync,
  rename, fsync dir, from memory, no DICOM, no database) did 1347 files/s with one thread and 1892
  with four in a fourth run (a one-off raw loop earlier: ~1000 and ~1650): the floor under any
  durable receiver here, against plain storescp's 1100-1550 inst/s;
* every inode this file system creates costs ~0.1-0.25 ms of kernel CPU: without a journal, ext4
  skips inodes freed in the last ~30 s (``recently_deleted`` in ``perf``: half of a create), and
  the tests and benchmarks free many. We create two per new instance (the temp file that becomes
  the data file, and the index entry), storescp one;
* with four associations the two cores are ~3/4 busy (one-off, from ``/proc/stat`` and
  ``getrusage``): our process spends 2.3 ms of CPU per instance (1.1 of it in the kernel) against
  1.8 with one association, storescu 0.8; a quarter of our samples in ``perf`` are context
  switches (``finish_task_switch``, ``_raw_spin_unlock_irqrestore``): threads handing the GIL over
  at each blocking system call (~35 per instance: socket polls and reads, file and directory calls,
  SQLite). Storescp serves its four associations one after the other at ~0.9 ms of CPU each.

The page cache: on this project's virtual machines writing into pages the guest has not used yet
costs ~1.5 ms per 525 KB (the host backs them on first touch: ``perf`` shows 86% of such a write in
``copy_folio_from_iter_atomic``), into pages just freed ~0.3 ms. The spool drops each file from the
page cache once it is durable (``Spool(keep_cached=False)``, the default; see ``dicom_gateway.spool``),
so the next instance is written into the pages the last one freed; storescp keeps its files cached
and pays for fresh pages unless the memory was freed just before. Without ``evict`` the reference
swung with the order of the runs (storescp's 4-association rate 370 after storescp runs, 730 after
tamsoat runs): with it, every storescp run gets freed pages too, the most favourable case for the
reference. With fsync off the spool keeps its pages too (they are dirty): that is why "fsync off"
is not much faster than "fsync on". The breakdown's tmpfs spool keeps every file in memory, so its
"+ spool" step pays for fresh pages each time: it overstates the spool's cost on a disk.

Why not 1.0: storescp fsyncs nothing, and storescu waits for each response before it sends the
next instance, so with one association each success waits for three durability points in series
(~1 ms when the disk is quiet) inside storescp's whole per-instance time of ~0.65 ms. An estimate
of the best any durable receiver can do here with one association: the file writes alone, ~0.75-1.0
ms per file, plus ~0.15 ms for a database commit, plus storescu's own ~0.36 ms per instance (the
"keeps nothing" line: 0.68 ms per instance, of which our CPU 0.32) is ~1.3-1.5 ms, i.e. ~670-770
inst/s or ~0.45-0.7 of plain storescp; storescp made as durable (file and directory) does just
that (0.46-0.73 of its plain speed). We reach 0.51-0.58 of it with one association and 0.75-0.81
with four. Sending has no fsync on our side and is at parity with storescu.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_gateway import ingest as ingest_mod
from dicom_gateway import metrics
from dicom_gateway import spool as spool_mod
from dicom_gateway.assembly import record_instance
from dicom_gateway.batching import BatchingSink
from dicom_gateway.ingest import Ingestor, InstanceSink
from dicom_gateway.pdu_stream import PduStream
from dicom_gateway.scp import ScpTimeouts, StorageSCP
from dicom_gateway.scu import send_files
from dicom_gateway.spool import Chunk, Spool, SpooledFile
from tamsoat.core.db import Database, migrate
from tamsoat.core.settings import Destination, DicomSettings

ENV = {**os.environ, "TCP_NODELAY": "1"}


def series(folder: Path, n: int) -> list[Path]:
    files = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
    if len(files) != n:
        from training.phantom import make_phantom
        from training.series import write_ct_series

        shutil.rmtree(folder, ignore_errors=True)
        print(f"generating a {n}-slice 512x512 CT series in {folder} ...", flush=True)
        files = write_ct_series(make_phantom(5, shape_kji=(n, 512, 512)), folder, seed=5)
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(port)


def storescu(port: int, files: list[Path], parallel: int, called: str) -> float:
    """Send ``files`` with ``parallel`` storescu processes; seconds until all have finished."""
    groups = [files[i::parallel] for i in range(parallel)]
    started = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port), *map(str, g)],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for g in groups]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - started


def build_fsync_shim(work: Path) -> Path | None:
    """``fsync_on_close.c`` built into ``work``; None (with a message) when there is no C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print("no C compiler: the durable DCMTK reference (fsync_on_close.c) is left out\n")
        return None
    target = work / "fsync_on_close.so"
    source = Path(__file__).with_name("fsync_on_close.c")
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(target), str(source), "-ldl"], check=True)
    return target


class DcmtkReceiver:
    """DCMTK's storescp; with ``preload`` (the fsync shim) every file it writes is fsynced with its
    directory before it answers."""

    def __init__(self, out: Path, preload: Path | None = None) -> None:
        self.out = out
        self.port = free_port()
        out.mkdir(parents=True)
        env = {**ENV, "LD_PRELOAD": str(preload)} if preload is not None else ENV
        self.proc = subprocess.Popen(["storescp", "--aetitle", "PACS", "-pdu", "131072", "--output-directory",
                                      str(out), str(self.port)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class _KeepNothingSpool(Spool):
    """A spool that stores nothing (for the breakdown: the protocol side alone)."""

    def store(self, chunks: Sequence[Chunk], **_: object) -> SpooledFile:
        return SpooledFile("-", "-", sum(len(c) for c in chunks), False, 1)


class TamsoatReceiver:
    """The service's receiving path: StorageSCP, spool and the SQLite instance row per instance.
    ``parts`` < 3 leaves parts out for the breakdown: 1 keeps nothing, 2 a spool without a database."""

    def __init__(self, home: Path, fsync: bool, parts: int = 3) -> None:
        url = f"sqlite:///{home / 'tamsoat.db'}"
        migrate(url)
        self.db = Database(url)
        settings = DicomSettings(ae_title="TAMSOAT", host="127.0.0.1", max_pdu=262144).model_copy(update={"port": 0})
        self.sink = BatchingSink(self.db, record_instance)  # as tamsoat.service wires it
        spool = (_KeepNothingSpool if parts == 1 else Spool)(home / "spool", fsync=fsync)
        sink: InstanceSink = self.sink if parts == 3 else (lambda stored: None)
        self.scp = StorageSCP(settings, spool, sink, ScpTimeouts())
        self.scp.start()
        self.port = self.scp.port

    def close(self) -> None:
        self.scp.stop()
        self.sink.close()
        self.db.dispose()


def durable_writes(folder: Path, payloads: list[bytes], parallel: int) -> float:
    """The floor under any durable receiver on this disk, with no DICOM and no database: each payload
    written the way a durable receiver must (temp file, write, fsync, rename, fsync the directory),
    by ``parallel`` threads. Seconds for all."""
    folder.mkdir(parents=True)

    def write(indices: range) -> None:
        for i in indices:
            temp, final = folder / f".{i}.partial", folder / f"{i}.dcm"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                view = memoryview(payloads[i])
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # as the spool does
            finally:
                os.close(fd)
            os.rename(temp, final)
            directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    threads = [threading.Thread(target=write, args=(range(k, len(payloads), parallel),)) for k in range(parallel)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def evict(folder: Path) -> None:
    """Write back every file under ``folder`` and drop it from the page cache, so that every run
    starts with the same memory: ~160 MB of pages just freed. On this project's virtual machines,
    writing into pages never used before costs ~5x more than into pages just freed; tamsoat's spool
    drops each file once it is durable, DCMTK's storescp keeps them, and without this a storescp
    run that follows another storescp run pays for fresh pages, one that follows a tamsoat run does
    not (its 4-association rate then doubles)."""
    os.sync()
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def median_ratio(runs: dict[tuple[str, bool], list[float]], measured: tuple[str, bool],
                 reference: tuple[str, bool]) -> float | None:
    """The median of the rounds' own ratios measured/reference (None without that reference)."""
    if reference not in runs:
        return None
    return statistics.median(m / r for m, r in zip(runs[measured], runs[reference], strict=True))


def _store_seconds() -> tuple[float, float]:
    """(sum, count) of the gateway's ingest-time histogram for DIMSE."""
    labels = {"source": "dimse"}
    total = metrics.REGISTRY.get_sample_value("tamsoat_dicom_store_seconds_sum", labels) or 0.0
    count = metrics.REGISTRY.get_sample_value("tamsoat_dicom_store_seconds_count", labels) or 0.0
    return total, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "tamsoat-bench" / "series300")
    ap.add_argument("--instances", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3, help="repeat each measurement; the median is shown")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder on /tmp)")
    ap.add_argument("--only", choices=["receive", "send", "breakdown", "phases"], default=None,
                    help="breakdown: one association, the receiving path's parts added one at a time; "
                         "phases: time spent in each step of the receiving path, per instance")
    args = ap.parse_args()
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} (DCMTK) is not installed: run scripts/setup")
    files = series(args.data, args.instances)
    work = Path(tempfile.mkdtemp(prefix="tamsoat-bench-", dir=args.work))
    try:
        _run(args, files, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, files: list[Path], work: Path) -> None:
    mb = sum(f.stat().st_size for f in files) / 1e6
    n = len(files)
    print(f"{n} instances, {mb:.1f} MB, {os.cpu_count()} CPUs, rounds={args.rounds} (median shown)\n")
    counter = iter(range(10_000))

    store_ms: dict[tuple[int, bool], list[float]] = {}
    shim = build_fsync_shim(work) if args.only in (None, "receive") else None

    payloads: list[bytes] = []

    def receive(kind: str, parallel: int, fsync: bool = True) -> float:
        where = work / f"r{next(counter)}"
        if kind == "floor":
            if not payloads:  # read once, outside the timed part
                payloads.extend(f.read_bytes() for f in files)
            os.sync()
            seconds = durable_writes(where, payloads, parallel)
            evict(where)
            return n / seconds
        receiver: DcmtkReceiver | TamsoatReceiver
        receiver = DcmtkReceiver(where, shim if fsync else None) if kind == "dcmtk" else TamsoatReceiver(where, fsync)
        # Start every run with no dirty pages of the one before: storescp leaves ~160 MB unwritten
        # (it never fsyncs), and the kernel's write-back of it would otherwise slow the next run.
        os.sync()
        before = _store_seconds()
        try:
            seconds = storescu(receiver.port, files, parallel, "PACS" if kind == "dcmtk" else "TAMSOAT")
        finally:
            # Received files are removed at the end, not here: ext4 skips inodes freed in the last
            # ~30 s when it creates a file, so deleting 300 files just before the next receiver
            # writes its 300 makes that receiver's file creation several times dearer.
            receiver.close()
            evict(where)
        if kind == "tamsoat":
            spent, count = (a - b for a, b in zip(_store_seconds(), before, strict=True))
            store_ms.setdefault((parallel, fsync), []).append(1000 * spent / max(count, 1))
        return n / seconds

    def report(label: str, rate: float, ratio: float | None = None, store: tuple[int, bool] | None = None,
               durable_ratio: float | None = None) -> None:
        """``ratio``: tamsoat/DCMTK, the median of the interleaved rounds' own ratios; ``durable_ratio``
        the same against the durable DCMTK reference."""
        shown = f"   ratio {ratio:.2f}" if ratio is not None else ""
        if durable_ratio is not None:
            shown += f" (vs durable DCMTK {durable_ratio:.2f})"
        where = ""
        if store is not None and store in store_ms:
            # Time inside the ingest path (header check, spool write+fsyncs, DB row+commit) per instance,
            # against the wall time per instance (per association).
            where = f"   durable store {statistics.median(store_ms[store]):.1f} of {1000 * store[0] / rate:.1f} ms"
        print(f"  {label:<40} {rate:8.1f} inst/s {rate * mb / n:8.1f} MB/s{shown}{where}", flush=True)

    if args.only in (None, "receive"):
        print("receiving (DCMTK storescu -> receiver)")
        for parallel in (1, 4):
            # Interleaved: each round runs DCMTK and both tamsoat variants one after the other, so
            # every ratio compares runs minutes apart at most (this machine's speed drifts by 2x).
            runs: dict[tuple[str, bool], list[float]] = {}
            kinds = [("dcmtk", False), *([("dcmtk", True)] if shim else []), ("floor", True), ("tamsoat", True),
                     ("tamsoat", False)]
            for _ in range(args.rounds):
                for kind, fsync in kinds:
                    runs.setdefault((kind, fsync), []).append(receive(kind, parallel, fsync))

            report(f"DCMTK storescp, {parallel} assoc (no fsync)", statistics.median(runs["dcmtk", False]))
            if shim:
                report(f"DCMTK storescp, {parallel} assoc, durable", statistics.median(runs["dcmtk", True]),
                       median_ratio(runs, ("dcmtk", True), ("dcmtk", False)))
            report(f"durable file writes alone, {parallel} thread(s)", statistics.median(runs["floor", True]),
                   median_ratio(runs, ("floor", True), ("dcmtk", False)))
            for fsync in (True, False):
                label = f"tamsoat SCP, {parallel} assoc, fsync {'on' if fsync else 'off'}"
                report(label, statistics.median(runs["tamsoat", fsync]),
                       median_ratio(runs, ("tamsoat", fsync), ("dcmtk", False)), (parallel, fsync),
                       median_ratio(runs, ("tamsoat", fsync), ("dcmtk", True)))

    if args.only == "breakdown":
        _breakdown(args, files, work)
    if args.only == "phases":
        _phases(files, work)

    if args.only in (None, "send"):
        print("sending (sender -> DCMTK storescp), 1 association")
        pacs = DcmtkReceiver(work / "pacs")
        dest = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs.port)
        try:
            def dcmtk_send() -> float:
                return n / storescu(pacs.port, files, 1, "PACS")

            def tamsoat_send() -> float:
                started = time.perf_counter()
                results = send_files(dest, files, "BENCH")
                seconds = time.perf_counter() - started
                assert all(r.outcome == "success" for r in results), results[:3]
                return n / seconds

            sends: dict[str, list[float]] = {"dcmtk": [], "tamsoat": []}
            for _ in range(args.rounds):  # interleaved, and from the same memory, as for receiving
                sends["dcmtk"].append(dcmtk_send())
                evict(pacs.out)
                sends["tamsoat"].append(tamsoat_send())
                evict(pacs.out)
            report("DCMTK storescu", statistics.median(sends["dcmtk"]))
            report("tamsoat SCU (send_files)", statistics.median(sends["tamsoat"]),
                   statistics.median(t / d for t, d in zip(sends["tamsoat"], sends["dcmtk"], strict=True)))
        finally:
            pacs.close()


def _breakdown(args: argparse.Namespace, files: list[Path], work: Path) -> None:
    """One association, the receiving path's parts added one at a time: inst/s and our process's CPU
    per instance (storescu's own CPU is its children's, not counted)."""
    memory = Path("/dev/shm") if Path("/dev/shm").is_dir() else work  # tmpfs: no disk in the way
    n = len(files)
    variants = [
        ("acceptor, header, checks (keeps nothing)", memory, False, 1),
        ("+ spool on tmpfs, no fsync", memory, False, 2),
        ("+ database row (SQLite on tmpfs)", memory, False, 3),
        ("+ disk, fsync on (the service)", work, True, 3),
    ]
    print("receiving, 1 association, parts added one at a time (median of rounds; each round runs all, in turn)")

    def dcmtk_round(i: int) -> float:
        receiver = DcmtkReceiver(work / f"breakdown-dcmtk-{i}")
        try:
            os.sync()
            return n / storescu(receiver.port, files, 1, "PACS")
        finally:
            receiver.close()
            evict(receiver.out)

    def tamsoat_round(base: Path, fsync: bool, parts: int) -> tuple[float, float]:
        home = Path(tempfile.mkdtemp(prefix="tamsoat-breakdown-", dir=base))
        try:
            receiver = TamsoatReceiver(home, fsync, parts)
            os.sync()
            before = resource.getrusage(resource.RUSAGE_SELF)
            try:
                seconds = storescu(receiver.port, files, 1, "TAMSOAT")
            finally:
                receiver.close()
            after = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        return n / seconds, 1000 * (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / n

    dcmtk: list[float] = []
    results: list[list[tuple[float, float]]] = [[] for _ in variants]
    for i in range(args.rounds):
        dcmtk.append(dcmtk_round(i))
        for v, (_, base, fsync, parts) in enumerate(variants):
            results[v].append(tamsoat_round(base, fsync, parts))
    print(f"  {'DCMTK storescp':<44} {statistics.median(dcmtk):8.1f} inst/s")
    for (label, *_), got in zip(variants, results, strict=True):
        ratio = statistics.median(rate / ref for (rate, _), ref in zip(got, dcmtk, strict=True))
        print(f"  {label:<44} {statistics.median(r for r, _ in got):8.1f} inst/s   ratio {ratio:.2f}   our CPU "
              f"{statistics.median(c for _, c in got):.2f} ms/instance", flush=True)


# (owner, attribute, label): the steps of the receiving path that --only phases times; nested ones
# are indented under the step that calls them.
_PHASES: list[tuple[object, str, str]] = [
    (PduStream, "read_pdu", "read a PDU (includes waiting for storescu)"),
    (Ingestor, "ingest", "ingest: header, spool, row"),
    (ingest_mod, "_read_header", "  header"),
    (Spool, "store", "  spool: file and index entry"),
    (spool_mod, "_write_atomic", "    write, fsync, rename, fsync dir"),
    (spool_mod, "_write_chunks", "      write (into the page cache)"),
    (spool_mod.os, "fsync", "      fsync (file and directory)"),
    (Spool, "_write_index", "    index entry (a new file)"),
    (BatchingSink, "__call__", "  database: row and commit (WAL fsync)"),
    (sys.modules[__name__], "record_instance", "    the row's statements"),
    (PduStream, "send_parts", "send the response"),
]


def _phases(files: list[Path], work: Path) -> None:
    """The service's receiving path, fsync on, with each step of :data:`_PHASES` timed (summed over
    the instances and divided by their number, so with 4 associations the steps overlap)."""
    n = len(files)
    for parallel in (1, 4):
        spent: dict[str, float] = {label: 0.0 for _, _, label in _PHASES}
        originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in _PHASES]
        for owner, name, label in _PHASES:
            setattr(owner, name, _timed(owner.__dict__[name], label, spent))
        try:
            where = work / f"phases-{parallel}"
            receiver = TamsoatReceiver(where, fsync=True)
            os.sync()
            try:
                seconds = storescu(receiver.port, files, parallel, "TAMSOAT")
            finally:
                receiver.close()
                evict(where)
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)
        print(f"{parallel} association(s): {n / seconds:.1f} inst/s, {1000 * seconds * parallel / n:.2f} ms per "
              f"instance and association; per instance, summed over the associations:")
        for label, total in spent.items():
            print(f"  {label:<48} {1000 * total / n:6.3f} ms")


def _timed(function: Any, label: str, spent: dict[str, float]) -> Any:
    """``function`` (a plain function or a static method) adding its wall time to ``spent[label]``."""
    inner = function.__func__ if isinstance(function, staticmethod) else function

    @functools.wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - started

    return staticmethod(timed) if isinstance(function, staticmethod) else timed


if __name__ == "__main__":
    main()
