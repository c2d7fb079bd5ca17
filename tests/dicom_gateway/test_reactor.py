"""dicom_gateway.pynetdicom_tuning and .reactor: pynetdicom's loops block until there is work instead
of polling, and keep their timers, release and abort behaviour.

pynetdicom runs our requestors (dicom_gateway.scu installs the tuning before it creates an AE); the
peer here is our own SCP, which does not use pynetdicom (dicom_gateway.acceptor)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from pynetdicom import AE, dimse_messages
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from dicom_gateway import pynetdicom_tuning, reactor
from dicom_gateway.command_set import encode_command_set
from dicom_gateway.scp import ScpTimeouts, StorageSCP
from dicom_gateway.spool import Spool
from tamsoat.core.settings import DicomSettings
from tests.dicom_gateway.gateway_helpers import SCP_AE, RecordingSink, RunningSCP, start_scp

VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture(autouse=True)
def tuned() -> None:
    """As dicom_gateway.scu does before it creates an AE."""
    assert pynetdicom_tuning.install()


def _echo_association(port: int, network_timeout: float = 10) -> Association:
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = 10
    ae.network_timeout = network_timeout
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title=SCP_AE)
    assert assoc.is_established
    return assoc


def test_installed_for_the_pinned_pynetdicom(running_scp: RunningSCP) -> None:
    """Fails when pynetdicom is upgraded past the versions the loops were copied from: review
    dicom_gateway/reactor.py and command_set.py against the new pynetdicom, then extend
    SUPPORTED_VERSIONS."""
    assert pynetdicom.__version__.startswith(pynetdicom_tuning.SUPPORTED_VERSIONS)
    assert pynetdicom_tuning.is_installed()
    assert DULServiceProvider.run_reactor is reactor._dul_run_reactor
    assert Association._run_reactor is reactor._assoc_run_reactor
    assert Association.kill is reactor._assoc_kill
    assert dimse_messages.encode is encode_command_set


def test_idle_association_does_not_spin(running_scp: RunningSCP, monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle association's DUL loop (a tuned pynetdicom requestor's) wakes about every IDLE_WAIT_S,
    not every millisecond as pynetdicom's polling does (~1,000 turns in this half second)."""
    waits = 0
    original = reactor._Waker.wait

    def counting(self: reactor._Waker, dul: Any) -> None:
        nonlocal waits
        waits += 1
        original(self, dul)

    assoc = _echo_association(running_scp.port)
    try:
        time.sleep(0.1)
        monkeypatch.setattr(reactor._Waker, "wait", counting)
        time.sleep(0.5)
        monkeypatch.undo()
    finally:
        assoc.release()
    assert 0 < waits < 2 * 0.5 / reactor.IDLE_WAIT_S + 10


def test_round_trips_do_not_wait_for_polling_sleeps(running_scp: RunningSCP, monkeypatch: pytest.MonkeyPatch) -> None:
    """60 C-ECHO round trips from a tuned pynetdicom requestor: its loops never sleep. Polling
    pynetdicom sleeps 1 ms on every idle turn of both its loops (several sleeps per round trip, ~2.5 ms
    of waiting each); event-driven, the loops block in select() or on an event and never call sleep.
    Our SCP's threads are counted too (they block in recv). Counted, not timed, so machine load
    cannot decide it."""
    sleeps: list[str] = []
    real_sleep = time.sleep

    def counting(seconds: float) -> None:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith(("pynetdicom", "dicom_gateway")):
            sleeps.append(f"{caller}:{sys._getframe(1).f_lineno}")
        real_sleep(seconds)

    assoc = _echo_association(running_scp.port)
    try:
        monkeypatch.setattr(time, "sleep", counting)
        for _ in range(60):
            assert assoc.send_c_echo().Status == 0x0000
        monkeypatch.undo()
    finally:
        assoc.release()
    assert sleeps == [], f"{len(sleeps)} sleeps in pynetdicom's loops, e.g. {sleeps[:3]}"


def test_release_and_stop_are_prompt(tmp_path: Path) -> None:
    server = start_scp(tmp_path)
    try:
        assoc = _echo_association(server.port)
        started = time.perf_counter()
        assoc.release()
        assert assoc.is_released
        assert time.perf_counter() - started < 0.5
        busy = _echo_association(server.port)
        started = time.perf_counter()
    finally:
        server.scp.stop(grace_s=0.2)  # aborts the open association
    assert time.perf_counter() - started < 2.0
    deadline = time.monotonic() + 2
    while busy.is_established and time.monotonic() < deadline:
        time.sleep(0.01)
    assert busy.is_aborted


def test_release_when_another_thread_unpaused_the_reactor(running_scp: RunningSCP) -> None:
    """pynetdicom serves an N-EVENT-REPORT in a thread of its own that sets ``_is_paused = False``
    when done, even while the association's loop is parked at its checkpoint: release() (which
    waits for the pause) must still go through."""
    assoc = _echo_association(running_scp.port)
    assoc._reactor_checkpoint.clear()  # park the loop, as a send_* call or release() does
    time.sleep(0.1)
    assoc._is_paused = False  # what the N-EVENT-REPORT thread does at its end
    releasing = threading.Thread(target=assoc.release, daemon=True)
    releasing.start()
    releasing.join(2)
    assert not releasing.is_alive(), "release() waited forever for the pause"
    assert assoc.is_released


def test_network_timeout_still_aborts_an_idle_association(tmp_path: Path) -> None:
    """The SCP's network (idle) timeout aborts an association that sends nothing."""
    settings = DicomSettings(ae_title=SCP_AE, host="127.0.0.1").model_copy(update={"port": 0})
    scp = StorageSCP(settings, Spool(tmp_path / "spool", fsync=False), RecordingSink(),
                     ScpTimeouts(acse=5, dimse=5, network=0.5))
    scp.start()
    try:
        assoc = _echo_association(scp.port)
        deadline = time.monotonic() + 5
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.02)
        assert assoc.is_aborted
        assert time.monotonic() < deadline
    finally:
        scp.stop(grace_s=0.2)
