"""PDUs over a socket (TCP or TLS): read one whole PDU into one buffer, send, close politely.

Shared by our acceptor (:mod:`dicom_gateway.acceptor`) and requestor (:mod:`dicom_gateway.requestor`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Sequence

from dicom_gateway.upper_layer import REASON_INVALID_PARAMETER, PduError

__all__ = ["PduStream", "recv_exactly"]

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024  # buffers per call
_TLS_WRITE = 256 * 1024  # over TLS, parts are sent in writes of about this size


def recv_exactly(sock: socket.socket, view: memoryview) -> int:
    """Fill ``view`` from ``sock``; returns the bytes read, fewer only when the peer closed.

    TCP_QUICKACK before every read: many senders write the command and the data set as separate
    small writes; with Nagle on their side and delayed ACKs on ours each instance would wait ~40 ms.
    """
    got = 0
    while got < len(view):
        if _QUICKACK is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        n = sock.recv_into(view[got:])
        if n == 0:
            return got
        got += n
    return got


class PduStream:
    """One transport connection carrying PDUs. ``address`` is the peer's IP address."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        with contextlib.suppress(OSError):  # not TCP (e.g. a socket pair in tests): keep the defaults
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # our PDUs go out at once

    def _recv_into(self, view: memoryview) -> None:
        if recv_exactly(self.sock, view) < len(view):
            raise ConnectionResetError("the peer closed the connection")

    def read_pdu(self, limit: int) -> tuple[int, bytearray]:
        """(PDU type, body); a PDU longer than ``limit`` bytes raises :class:`PduError`."""
        header = bytearray(6)
        self._recv_into(memoryview(header))
        kind, length = header[0], int.from_bytes(header[2:6], "big")
        if length > limit:
            raise PduError(REASON_INVALID_PARAMETER, f"PDU 0x{kind:02X} of {length} bytes is over the limit {limit}")
        body = bytearray(length)
        self._recv_into(memoryview(body))
        return kind, body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_parts(self, parts: Sequence[bytes | memoryview]) -> None:
        """Send ``parts`` in order, as one stream of bytes: gathered into few system calls (one per
        ``_IOV_MAX`` parts, e.g. a command and its whole data set), without joining them."""
        if isinstance(self.sock, ssl.SSLSocket):  # TLS has no gathered send: few large records instead
            pending = bytearray()
            for part in parts:
                pending += part
                if len(pending) >= _TLS_WRITE:
                    self.sock.sendall(pending)
                    pending.clear()
            if pending:
                self.sock.sendall(pending)
            return
        for start in range(0, len(parts), _IOV_MAX):
            group = [memoryview(p) for p in parts[start:start + _IOV_MAX]]
            while group:
                sent = self.sock.sendmsg(group)
                while group and sent >= len(group[0]):
                    sent -= len(group[0])
                    group.pop(0)
                if group and sent:
                    group[0] = group[0][sent:]

    def settimeout(self, seconds: float) -> None:
        self.sock.settimeout(seconds)

    def close(self, linger_s: float = 0.0) -> None:
        """Close the connection. With ``linger_s``, first let the peer close it (PS3.8: after an
        A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT the requestor closes, within the ARTIM timeout):
        closing with its bytes unread would reset the connection and could destroy our last PDU
        before the peer has read it."""
        if linger_s > 0:
            with contextlib.suppress(OSError, ValueError):
                self.sock.shutdown(socket.SHUT_WR)
                self.sock.settimeout(linger_s)
                while self.sock.recv(65536):
                    pass
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
