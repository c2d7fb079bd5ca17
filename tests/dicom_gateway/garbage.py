"""Send a C-STORE whose data set cannot be decoded (for SCP robustness tests, here and in integration).

pynetdicom streams a file's data set bytes unchanged when ``STORE_SEND_CHUNKED_DATASET`` is set,
so a Part-10 file with valid File Meta Information and corrupt data set bytes reaches the peer as is.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from dicom_gateway.spool import part10_header

# (0008,0016) claims to be a sequence of undefined length whose only item is cut short.
UNDECODABLE_DATASET = b"\x08\x00\x16\x00SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00"


def send_garbage(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "GARBAGE",
    payload: bytes = UNDECODABLE_DATASET,
    timeout_s: float = 10.0,
) -> int | None:
    """C-STORE ``payload`` as a CT Image Storage data set; return the peer's status, or None when no
    association or no response."""
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "garbage.dcm"
        header = part10_header(
            sop_class_uid=CTImageStorage,
            sop_instance_uid=str(generate_uid()),
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
        path.write_bytes(header + payload)
        assoc = ae.associate(host, port, ae_title=called_ae)
        if not assoc.is_established:
            return None
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            rsp = assoc.send_c_store(path)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = previous
            if assoc.is_established:
                assoc.release()
    return int(rsp.Status) if "Status" in rsp else None
