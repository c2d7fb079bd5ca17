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
Both sides run with ``TCP_NODELAY=1`` (DCMTK reads it from the environment). Every run starts after
``os.sync()``, so no receiver pays for the write-back of the files the one before left unwritten.

Sending: tamsoat's SCU (``dicom_gateway.scu.send_files``, one association) vs DCMTK ``storescu``,
both to DCMTK ``storescp``.

Prints instances/s and MB/s (data set bytes, 1 MB = 10^6 bytes) and tamsoat/DCMTK ratios.
The series is generated once (training.phantom, 300 x 512 x 512 CT slices) into ``--data``.
"durable store X of Y ms" is the time inside the ingest path (header check, spool write with its
fsyncs, database row and commit) against the wall time per instance and association.

Measured 2026-12-03 on the development machine (2 vCPUs, ext4 on a virtual disk whose fsync latency
varies several-fold from minute to minute), ``--rounds 3``, medians, load ~0.3 at the start:

    DCMTK storescp, 1 assoc (no fsync)       779 inst/s
    tamsoat SCP, 1 assoc, fsync on           201 inst/s  ratio 0.26   (3.7 of 5.0 ms in the durable store)
    tamsoat SCP, 1 assoc, fsync off          204 inst/s  ratio 0.26
    DCMTK storescp, 4 assoc (no fsync)       512 inst/s  (storescp serves one association at a time)
    tamsoat SCP, 4 assoc, fsync on           202 inst/s  ratio 0.39
    tamsoat SCP, 4 assoc, fsync off          239 inst/s  ratio 0.47
    sending: DCMTK storescu                  642 inst/s
    sending: tamsoat send_files              889 inst/s  ratio 1.39

Single rounds of the same code earlier that day, under other load, gave 1 assoc 0.21-0.51, 4 assoc
0.35-0.75 and sending 0.72-1.15: read ratios within a run, not across runs. Before this day's work
(pynetdicom's server and requestor, pydicom's header reader): 1 assoc 0.14-0.25, 4 assoc 0.18-0.20,
sending 0.33.

Where the time goes now, receiving: ``--only breakdown`` adds the parts of the path one at a time
(one association, our process's CPU per instance from getrusage; 2026-12-03, ``--rounds 3``):

    DCMTK storescp                                 549 inst/s
    acceptor, header, checks (keeps nothing)       466 inst/s  ratio 0.85  our CPU 1.02 ms/instance
    + spool on tmpfs, no fsync                     332 inst/s  ratio 0.61  our CPU 2.12 ms/instance
    + database row (SQLite on tmpfs)               200 inst/s  ratio 0.36  our CPU 4.01 ms/instance
    + disk, fsync on (the service)                 132 inst/s  ratio 0.24  our CPU 4.91 ms/instance

* the protocol side (our acceptor, the header scan, the ingest checks) nearly keeps up with DCMTK,
  bounded by storescu's own ~0.9 ms of CPU per instance;
* the spool costs ~1.1 ms of CPU even without a disk (by a one-off profile of ``Spool.store`` on
  tmpfs: SHA-256 of the 525 KB ~0.35, copying them into the page cache ~0.33, temp file, rename,
  per-SOP index and lock);
* the database row costs ~1.9 ms (SQLAlchemy's session and statements, the hand-over to the
  group-commit writer thread and back, SQLite): the largest part, and the first to make cheaper;
* the disk adds the two fsyncs of the file and its directory (a one-off raw loop: 0.8 + 0.6 ms when
  the disk is quiet, several ms when not) and ext4's journal work in the kernel.

With fsync off the time per instance hardly changes with one association: the Python work, not the
disk, is the bound there; with four associations the fsyncs share journal commits and the one
process's CPU (the GIL) bounds us. DCMTK's storescp fsyncs nothing, so ratio 1.0 "with fsync on"
would need the whole durable path (two fsyncs and a database commit) inside DCMTK's 1.3 ms of
unsynced work. Sending has no fsync on our side and is now faster than storescu: the next file is
read while the peer stores the current one, and the data set goes out as stored.
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
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_gateway import metrics
from dicom_gateway.assembly import record_instance
from dicom_gateway.batching import BatchingSink
from dicom_gateway.ingest import InstanceSink
from dicom_gateway.scp import ScpTimeouts, StorageSCP
from dicom_gateway.scu import send_files
from dicom_gateway.spool import Spool, SpooledFile
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


class DcmtkReceiver:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.port = free_port()
        out.mkdir(parents=True)
        self.proc = subprocess.Popen(["storescp", "--aetitle", "PACS", "-pdu", "131072", "--output-directory",
                                      str(out), str(self.port)], env=ENV, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class _KeepNothingSpool(Spool):
    """A spool that stores nothing (for the breakdown: the protocol side alone)."""

    def store(self, encoded: bytes, **_: object) -> SpooledFile:
        return SpooledFile("-", "-", len(encoded), False, 1)


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


def _store_seconds() -> tuple[float, float]:
    """(sum, count) of the gateway's ingest-time histogram for DIMSE."""
    labels = {"source": "dimse"}
    total = metrics.REGISTRY.get_sample_value("tamsoat_dicom_store_seconds_sum", labels) or 0.0
    count = metrics.REGISTRY.get_sample_value("tamsoat_dicom_store_seconds_count", labels) or 0.0
    return total, count


def median_rate(fn: Callable[[], float], rounds: int) -> float:
    return statistics.median(fn() for _ in range(rounds))


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
    rows: dict[str, float] = {}
    counter = iter(range(10_000))

    store_ms: dict[tuple[int, bool], list[float]] = {}

    def receive(kind: str, parallel: int, fsync: bool = True) -> float:
        where = work / f"r{next(counter)}"
        receiver: DcmtkReceiver | TamsoatReceiver
        receiver = DcmtkReceiver(where) if kind == "dcmtk" else TamsoatReceiver(where, fsync)
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
        if kind == "tamsoat":
            spent, count = (a - b for a, b in zip(_store_seconds(), before, strict=True))
            store_ms.setdefault((parallel, fsync), []).append(1000 * spent / max(count, 1))
        return n / seconds

    def report(label: str, rate: float, versus: str | None = None, store: tuple[int, bool] | None = None) -> None:
        rows[label] = rate
        ratio = f"   ratio {rate / rows[versus]:.2f}" if versus else ""
        where = ""
        if store is not None and store in store_ms:
            # Time inside the ingest path (header check, spool write+fsyncs, DB row+commit) per instance,
            # against the wall time per instance (per association).
            where = f"   durable store {statistics.median(store_ms[store]):.1f} of {1000 * store[0] / rate:.1f} ms"
        print(f"  {label:<40} {rate:8.1f} inst/s {rate * mb / n:8.1f} MB/s{ratio}{where}", flush=True)

    if args.only in (None, "receive"):
        print("receiving (DCMTK storescu -> receiver)")
        for parallel in (1, 4):
            ref = f"DCMTK storescp, {parallel} assoc (no fsync)"
            report(ref, median_rate(functools.partial(receive, "dcmtk", parallel), args.rounds))
            report(f"tamsoat SCP, {parallel} assoc, fsync on", median_rate(
                functools.partial(receive, "tamsoat", parallel, True), args.rounds), ref, (parallel, True))
            report(f"tamsoat SCP, {parallel} assoc, fsync off", median_rate(
                functools.partial(receive, "tamsoat", parallel, False), args.rounds), ref, (parallel, False))

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

            report("DCMTK storescu", median_rate(dcmtk_send, args.rounds))
            report("tamsoat SCU (send_files)", median_rate(tamsoat_send, args.rounds), "DCMTK storescu")
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
    print("receiving, 1 association, parts added one at a time (median of rounds)")
    def dcmtk_round(i: int) -> float:
        receiver = DcmtkReceiver(work / f"breakdown-dcmtk-{i}")
        try:
            os.sync()
            return n / storescu(receiver.port, files, 1, "PACS")
        finally:
            receiver.close()

    dcmtk = statistics.median(dcmtk_round(i) for i in range(args.rounds))
    print(f"  {'DCMTK storescp':<44} {dcmtk:8.1f} inst/s")
    for label, base, fsync, parts in variants:
        rates, cpus = [], []
        for _ in range(args.rounds):
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
            rates.append(n / seconds)
            cpus.append(1000 * (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / n)
        rate = statistics.median(rates)
        print(f"  {label:<44} {rate:8.1f} inst/s   ratio {rate / dcmtk:.2f}   our CPU "
              f"{statistics.median(cpus):.2f} ms/instance", flush=True)


if __name__ == "__main__":
    main()
