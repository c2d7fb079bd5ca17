"""Receive and send throughput of the DICOM gateway against DCMTK, on one 300-instance CT series.

    .venv/bin/python benchmarks/ingest.py                 # everything, 3 rounds, medians
    .venv/bin/python benchmarks/ingest.py --rounds 1 --only receive
    .venv/bin/python benchmarks/ingest.py --only breakdown   # where receiving's time goes

Receiving: DCMTK ``storescu`` sends the series to
  * DCMTK ``storescp`` (the reference; DCMTK 3.6.7's storescp has no fsync option, so it never
    fsyncs: its files may be lost on power failure although it answered success), and to
  * tamsoat's StorageSCP with the service's own sink (the instance row in SQLite, WAL,
    synchronous=FULL) and the spool's fsync ON (temp file, fsync, rename, fsync directory): success
    is answered only once the instance is durable. Also with fsync off, to show what durability costs.
Each with 1 association and with 4 parallel associations (4 storescu processes, a quarter each).
Both sides run with ``TCP_NODELAY=1`` (DCMTK reads it from the environment). Rounds are interleaved
(each round runs DCMTK, then tamsoat with fsync on, then off) and a ratio is the median of the
rounds' own ratios. After every run its files are written back and dropped from the page cache
(``evict``), so every run starts from the same memory; see "the page cache" below for why.

Sending: tamsoat's SCU (``dicom_gateway.scu.send_files``, one association) vs DCMTK ``storescu``,
both to DCMTK ``storescp``, interleaved the same way.

Prints instances/s and MB/s (data set bytes, 1 MB = 10^6 bytes) and tamsoat/DCMTK ratios.
The series is generated once (training.phantom, 300 x 512 x 512 CT slices) into ``--data``.
"durable store X of Y ms" is the time inside the ingest path (header check, spool write with its
fsyncs, database row and commit) against the wall time per instance and association.

Measured 2026-12-04 on the development machine (2 vCPUs, ext4 on a virtual disk whose fsync latency
varies several-fold from minute to minute), ``--rounds 3``:

    DCMTK storescp, 1 assoc (no fsync)       838 inst/s
    tamsoat SCP, 1 assoc, fsync on           291 inst/s  ratio 0.36   (2.5 of 3.4 ms in the durable store)
    tamsoat SCP, 1 assoc, fsync off          379 inst/s  ratio 0.47
    DCMTK storescp, 4 assoc (no fsync)       820 inst/s  (storescp serves one association at a time)
    tamsoat SCP, 4 assoc, fsync on           420 inst/s  ratio 0.49
    tamsoat SCP, 4 assoc, fsync off          471 inst/s  ratio 0.57
    sending: DCMTK storescu                  820 inst/s
    sending: tamsoat send_files              892 inst/s  ratio 1.09

The day before (same machine, rounds not interleaved, no eviction): tamsoat 201 inst/s with 1
association and 202 with 4 (DCMTK 779 and 512: its runs then paid for fresh pages, see below).

Where the time goes, receiving: ``--only breakdown`` adds the parts of the path one at a time (one
association, interleaved rounds, our process's CPU per instance from getrusage; 2026-12-04):

    DCMTK storescp                                 808 inst/s
    acceptor, header, checks (keeps nothing)      1057 inst/s  ratio 1.27  our CPU 0.49 ms/instance
    + spool on tmpfs, no fsync                     526 inst/s  ratio 0.65  our CPU 1.29 ms/instance
    + database row (SQLite on tmpfs)               445 inst/s  ratio 0.53  our CPU 1.68 ms/instance
    + disk, fsync on (the service)                 295 inst/s  ratio 0.31  our CPU 2.17 ms/instance

(2026-12-03, before: 0.85 / 0.61 / 0.36 / 0.24, with 1.02 / 2.12 / 4.01 / 4.91 ms of CPU.)

* the protocol side is faster than storescp: the data set's fragments are handed on as views of the
  PDU buffers and never joined (the join alone held the GIL ~0.3 ms per 525 KB instance);
* the spool costs ~0.8 ms of CPU without a disk: SHA-256 of the 525 KB (~0.35), copying them into
  the page cache, temp file, rename, per-SOP index and lock;
* the database row costs ~0.4 ms: two Core statements on a kept connection, no ORM session, and no
  hand-over to a writer thread (each of those cost ~0.1-0.25 ms; a one-off loop of ``BatchingSink``
  alone: 0.61 -> 0.35 ms of CPU per row on disk);
* the disk adds the two fsyncs of the file and its directory and the WAL's, in series (a one-off
  raw loop: ~0.5-0.7 + ~0.2 ms, several ms when the disk is busy), and ext4's metadata writes (this
  disk's ext4 has no journal, ``ext4_fsync_nojournal`` in ``perf``: concurrent fsyncs share nothing).

The page cache: on this project's virtual machines writing into pages the guest has not used yet
costs ~1.5 ms per 525 KB (the host backs them on first touch: ``perf`` shows 86% of such a write in
``copy_folio_from_iter_atomic``), into pages just freed ~0.3 ms. The spool drops each file from the
page cache once it is durable (``Spool(keep_cached=False)``, the default; see ``dicom_gateway.spool``),
so the next instance is written into the pages the last one freed; storescp keeps its files cached
and pays for fresh pages unless the memory was freed just before. Without ``evict`` the reference
swung with the order of the runs (storescp's 4-association rate 370 after storescp runs, 730 after
tamsoat runs): with it, every storescp run gets freed pages too, the most favourable case for the
reference. With fsync off the spool keeps its pages too (they are dirty): that is why "fsync off"
is not much faster than "fsync on".

Why not 1.0: DCMTK's storescp fsyncs nothing, and storescu waits for each response before it sends
the next instance, so with one association each success waits for three durability points in
series (file, directory, WAL: ~1-1.5 ms when the disk is quiet) that storescp never waits for,
inside its whole per-instance time of ~1.2 ms. With four associations the fsyncs overlap and the
bound is CPU: the two cores carry storescu's ~0.8 ms and our ~2.3-3.0 ms per instance (storescp:
~1.5 ms), ~45% of it in the Python interpreter (``perf``). Sending has no fsync on our side and is
faster than storescu: the next file is read while the peer stores the current one, and the data set
goes out as stored.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_gateway import metrics
from dicom_gateway.assembly import record_instance
from dicom_gateway.batching import BatchingSink
from dicom_gateway.ingest import InstanceSink
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
    ap.add_argument("--only", choices=["receive", "send", "breakdown"], default=None,
                    help="breakdown: one association, the receiving path's parts added one at a time")
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

    def receive(kind: str, parallel: int, fsync: bool = True) -> float:
        where = work / f"r{next(counter)}"
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
            kinds = [("dcmtk", False), *([("dcmtk", True)] if shim else []), ("tamsoat", True), ("tamsoat", False)]
            for _ in range(args.rounds):
                for kind, fsync in kinds:
                    runs.setdefault((kind, fsync), []).append(receive(kind, parallel, fsync))

            report(f"DCMTK storescp, {parallel} assoc (no fsync)", statistics.median(runs["dcmtk", False]))
            if shim:
                report(f"DCMTK storescp, {parallel} assoc, durable", statistics.median(runs["dcmtk", True]),
                       median_ratio(runs, ("dcmtk", True), ("dcmtk", False)))
            for fsync in (True, False):
                label = f"tamsoat SCP, {parallel} assoc, fsync {'on' if fsync else 'off'}"
                report(label, statistics.median(runs["tamsoat", fsync]),
                       median_ratio(runs, ("tamsoat", fsync), ("dcmtk", False)), (parallel, fsync),
                       median_ratio(runs, ("tamsoat", fsync), ("dcmtk", True)))

    if args.only == "breakdown":
        _breakdown(args, files, work)

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


if __name__ == "__main__":
    main()
