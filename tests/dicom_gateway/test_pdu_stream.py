"""PduStream: gathered sends arrive whole and in order, over TCP and over TLS-less socket pairs."""

from __future__ import annotations

import socket
import threading

import pytest

from dicom_gateway import pdu_stream
from dicom_gateway.pdu_stream import PduStream


def _receive_all(sock: socket.socket, out: bytearray) -> None:
    while chunk := sock.recv(1 << 16):
        out += chunk


@pytest.mark.parametrize("iov_max", [1024, 3])
def test_send_parts_sends_every_byte_in_order(monkeypatch: pytest.MonkeyPatch, iov_max: int) -> None:
    """Far more than the socket buffer holds, so sendmsg sends parts of the parts; with a tiny
    IOV_MAX the parts also go in several groups."""
    monkeypatch.setattr(pdu_stream, "_IOV_MAX", iov_max)
    parts: list[bytes | memoryview] = []
    for i in range(40):
        parts.append(bytes([i]) * 12)
        parts.append(memoryview(bytes([255 - i]) * (50_000 + i)))
    expected = b"".join(bytes(p) for p in parts)

    sender, receiver = socket.socketpair()
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    got = bytearray()
    reader = threading.Thread(target=_receive_all, args=(receiver, got))
    reader.start()
    try:
        PduStream(sender, "local").send_parts(parts)
    finally:
        sender.shutdown(socket.SHUT_WR)
        reader.join(10)
        sender.close()
        receiver.close()
    assert bytes(got) == expected
