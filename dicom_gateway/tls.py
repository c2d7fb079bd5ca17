"""DICOM TLS (PS3.15 Annex B, BCP 195): SSL contexts for the SCP and for outbound associations.

TLS 1.2 or newer. The SCP presents ``cert_file``; when ``ca_file`` is set it also requires and
verifies a client certificate signed by that CA (mutual TLS, as DICOM TLS peers usually do).
Outbound, the peer's certificate is always verified (against ``ca_file``, else the system CAs);
host names are not checked, because PACS certificates name AE titles or devices rather than DNS
names; the CA is what is trusted.
"""

from __future__ import annotations

import ssl

from tamsoat.core.settings import DicomTLS

__all__ = ["client_context", "server_context"]


def server_context(tls: DicomTLS) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(tls: DicomTLS | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if tls is not None and tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx
