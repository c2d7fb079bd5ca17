"""Event-driven reactors for pynetdicom: the one place where the gateway changes pynetdicom's loops.

pynetdicom 3.0 polls. Its DUL thread (socket and state machine) checks the socket with
``select(timeout=0)`` and, when nothing is there, sleeps ``_run_loop_delay`` (1 ms); the
association thread (DIMSE messages, release, abort) sleeps 1 ms on every turn of its loop. A
C-STORE pays several of those waits in series (the request waits for the DUL to notice the socket
and for the association thread to notice the complete message, the response waits for the DUL to
notice it was queued; a sender waits for the association thread to pause before every request):
~1.5 ms of a 5 ms instance, and more CPU for the busy loops. pynetdicom has no supported setting
for this (``_run_loop_delay`` only trades latency for CPU).

:func:`install` replaces the two loops with copies that keep every check and its order but *block*
until there is work:

* the DUL waits in ``select()`` on its socket and on a wake-up socket pair, which
  ``send_pdu`` (a primitive to send), ``kill_dul`` and ``stop_dul`` signal;
* the association thread waits on an :class:`threading.Event` that the DUL sets after every
  state-machine action (a complete DIMSE message, an A-RELEASE or A-ABORT) and when it stops. It
  waits *paused* (``_is_paused``), so a ``send_*`` call on its association need not wait for it;
* ``Association.kill`` re-checks whether the DUL has stopped after each DUL action, not every 10 ms.

Every wait is capped at :data:`IDLE_WAIT_S`, so the timers (ARTIM, network idle timeout) and the
kill flags are still checked at least that often. The copies follow pynetdicom 3.0;
:func:`dicom_gateway.pynetdicom_tuning.install` applies them only to the versions it names.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ

__all__ = ["IDLE_WAIT_S", "install"]

LOG = logging.getLogger(__name__)

IDLE_WAIT_S = 0.05


class _Waker:
    """The wake-up channel of one association: a socket pair the DUL selects on, and the event
    the association thread waits on. Closed sockets make :meth:`wake` a no-op (never a write to a
    reused file descriptor)."""

    def __init__(self) -> None:
        self._recv, self._send = socket.socketpair()
        self._recv.setblocking(False)
        self._send.setblocking(False)
        self._waiting = False
        self.assoc_event = threading.Event()

    def wake(self) -> None:
        """Call after making work visible (a queued primitive, a kill flag). Sends a byte only
        while the DUL is waiting: a busy DUL finds the work itself (see :meth:`wait`)."""
        if self._waiting:
            # OSError: full (a wake-up is pending anyway) or closed (the DUL has stopped).
            with contextlib.suppress(OSError):
                self._send.send(b"\x00")

    def wait(self, dul: DULServiceProvider) -> None:
        """Block until the DUL's socket is readable, :meth:`wake` is called, or
        :data:`IDLE_WAIT_S` passes. Announces the wait *before* its last look for work, so a
        producer either sees the announcement (and wakes us) or put its work before that look."""
        self._waiting = True
        try:
            if dul.to_provider_queue.queue or dul._kill_thread:
                return
            raw = _raw_socket(dul)
            if isinstance(raw, ssl.SSLSocket) and raw.pending():
                return  # decrypted data already buffered, which select() cannot see
            watched: list[Any] = [self._recv]
            if raw is not None and raw.fileno() >= 0:
                watched.append(raw)
            try:
                ready, _, _ = select.select(watched, [], [], IDLE_WAIT_S)
            except (OSError, ValueError):  # the socket was closed under us: the loop will notice
                time.sleep(0.001)
                return
        finally:
            self._waiting = False
        if self._recv in ready:
            with contextlib.suppress(OSError):  # drained (BlockingIOError) or closed
                while self._recv.recv(4096):
                    pass

    def close(self) -> None:
        self._recv.close()
        self._send.close()
        self.assoc_event.set()  # the association thread checks whether the DUL is still alive


_waker_lock = threading.Lock()


def _waker(dul: DULServiceProvider) -> _Waker:
    waker: _Waker | None = getattr(dul, "_tamsoat_waker", None)
    if waker is None:
        with _waker_lock:
            waker = getattr(dul, "_tamsoat_waker", None)
            if waker is None:
                waker = _Waker()
                dul._tamsoat_waker = waker  # type: ignore[attr-defined]
    return waker


def _raw_socket(dul: DULServiceProvider) -> socket.socket | None:
    assoc_socket = dul.socket
    return getattr(assoc_socket, "socket", None) if assoc_socket is not None else None


def _dul_run_reactor(self: DULServiceProvider) -> None:
    """``DULServiceProvider.run_reactor`` of pynetdicom 3.0, with its idle ``time.sleep`` replaced
    by :meth:`_Waker.wait` and the association thread woken after every state-machine action."""
    waker = _waker(self)
    try:
        self._idle_timer.start()
        wait = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                wait = True
            if wait:
                waker.wait(self)
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                # As pynetdicom: bypass the state machine and send an A-ABORT.
                LOG.error("dicom.reactor.dul_failed error=%s; aborting the association", type(exc).__name__)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                if self.socket is not None:
                    self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                wait = True
                continue
            self.state_machine.do_action(event)
            waker.assoc_event.set()
            wait = False
    finally:
        waker.close()


def _assoc_run_reactor(self: Association) -> None:
    """``Association._run_reactor`` of pynetdicom 3.0 with its 1 ms sleep replaced by a paused wait
    on the DUL's event. After un-pausing it re-checks the checkpoint, so a ``send_*`` call that
    saw it paused can never have its response taken by this loop.

    pynetdicom serves an N-EVENT-REPORT in a thread of its own, which sets ``_is_paused = False``
    when it is done, whatever this loop is doing; so the flag is set again before and while this
    loop waits at the checkpoint (else a ``release()`` waiting for the pause would wait forever)."""
    event = _waker(self.dul).assoc_event
    self._is_paused = False
    while not self._kill:
        self._is_paused = True
        event.wait(IDLE_WAIT_S)
        event.clear()
        self._is_paused = True
        while not self._reactor_checkpoint.wait(IDLE_WAIT_S):
            self._is_paused = True
        self._is_paused = False
        if not self._reactor_checkpoint.is_set():
            continue  # a send_* call paused us meanwhile: let it have the messages

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)  # type: ignore[arg-type]

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            LOG.info("dicom.reactor.released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires for subscribers
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            LOG.error("dicom.reactor.network_timeout")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


def _assoc_kill(self: Association) -> None:
    """``Association.kill`` of pynetdicom 3.0, re-checking whether the DUL has stopped after each of
    its state-machine actions (at least every 10 ms, as before) instead of sleeping 10 ms: an
    accepted association's thread ends (and stops counting against ``maximum_associations``) right
    after the peer closes the connection."""
    self._reactor_checkpoint.set()
    self._kill = True
    self.is_established = False
    self._is_paused = True
    event = _waker(self.dul).assoc_event
    while self.dul.is_alive() and not self.dul.stop_dul():
        event.wait(0.01)
        event.clear()


def _waking(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` followed by a wake-up of the DUL's loop."""

    def wrapper(self: DULServiceProvider, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        _waker(self).wake()
        return result

    wrapper.__doc__ = method.__doc__
    wrapper.__name__ = method.__name__
    return wrapper


def _stopping(method: Callable[[DULServiceProvider], bool]) -> Callable[[DULServiceProvider], bool]:
    """``stop_dul``, with the loop woken first so it sees the kill flag at once."""

    def stop_dul(self: DULServiceProvider) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            _waker(self).wake()
        return method(self)

    stop_dul.__doc__ = method.__doc__
    return stop_dul


def install() -> None:
    """Put the event-driven loops in place of pynetdicom's (call once, before any association)."""
    DULServiceProvider.run_reactor = _dul_run_reactor  # type: ignore[method-assign]
    DULServiceProvider.send_pdu = _waking(DULServiceProvider.send_pdu)  # type: ignore[method-assign]
    DULServiceProvider.kill_dul = _waking(DULServiceProvider.kill_dul)  # type: ignore[method-assign]
    DULServiceProvider.stop_dul = _stopping(DULServiceProvider.stop_dul)  # type: ignore[method-assign,assignment]
    Association._run_reactor = _assoc_run_reactor  # type: ignore[method-assign]
    Association.kill = _assoc_kill  # type: ignore[method-assign]
