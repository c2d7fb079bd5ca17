"""DICOM networking and storage: the receiving SCP, the durable spool and the sending SCU.

Imports pydicom, pynetdicom and the kernel only (never torch).
"""

from dicom_gateway.scp import InstanceSink, ScpTimeouts, StorageSCP, StoredInstance
from dicom_gateway.scu import EchoResult, ScuTimeouts, SendResult, echo, send_files
from dicom_gateway.spool import (
    OutOfResourcesError,
    Spool,
    SpooledFile,
    SpoolError,
    SpoolFullError,
    SpoolIOError,
    write_durably,
)
from dicom_gateway.status import Classification, Outcome, classify_store_status
from dicom_gateway.uids import InvalidUIDError, is_valid_uid, validate_uid

__all__ = [
    "Classification",
    "EchoResult",
    "InstanceSink",
    "InvalidUIDError",
    "OutOfResourcesError",
    "Outcome",
    "ScpTimeouts",
    "ScuTimeouts",
    "SendResult",
    "Spool",
    "SpoolError",
    "SpoolFullError",
    "SpoolIOError",
    "SpooledFile",
    "StorageSCP",
    "StoredInstance",
    "classify_store_status",
    "echo",
    "is_valid_uid",
    "send_files",
    "validate_uid",
    "write_durably",
]
