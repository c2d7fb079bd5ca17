"""Socket tuning for DICOM associations, ours and theirs (pynetdicom's EVT_CONN_OPEN hook)."""

from __future__ import annotations

import socket

from pynetdicom import evt

from dicom_gateway.pdu_stream import recv_exactly

__all__ = ["tune_connection"]


def tune_connection(event: evt.Event) -> None:
    """Per-connection socket tuning, before the first PDU is read.

    * ``TCP_NODELAY``: our responses go out at once (no Nagle wait).
    * ``TCP_QUICKACK`` before every read, with a receive loop that reads straight into one
      buffer per PDU (:func:`dicom_gateway.pdu_stream.recv_exactly`, as our own associations do).
    """
    assoc_socket = event.assoc.dul.socket
    raw = getattr(assoc_socket, "socket", None)
    if assoc_socket is None or raw is None:
        return
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return  # not TCP (e.g. a socketpair in tests): leave the defaults

    def recv(nr_bytes: int) -> bytearray:
        buf = bytearray(nr_bytes)
        with memoryview(buf) as view:
            got = recv_exactly(raw, view)
        del buf[got:]  # closed by the peer: return what was read, as pynetdicom does
        return buf

    assoc_socket.recv = recv  # type: ignore[method-assign]
