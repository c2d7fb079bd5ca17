"""Query/Retrieve as SCU (Study Root): C-FIND a study at a PACS, and C-MOVE it to an AE title (ours,
by default), so a past study comes into the flow through our SCP like any other.

For C-MOVE the PACS must know our AE title's address (its own configuration); the instances then
arrive on associations the PACS opens to our SCP, are spooled and assembled as usual.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicom_gateway.scu import ScuTimeouts, _associate, _make_ae, _not_established
from dicom_gateway.uids import validate_uid
from tamsoat.core.settings import Destination, DicomTLS

__all__ = ["MoveResult", "StudyMatch", "find_study", "move_study"]

LOG = logging.getLogger(__name__)

_PENDING = (0xFF00, 0xFF01)
_MOVE_PENDING = 0xFF00


class QueryError(Exception):
    """The query or retrieve could not be done; the message says why."""


@dataclass(frozen=True)
class StudyMatch:
    """A C-FIND match at STUDY level; display attributes for the operator, never logged."""

    study_instance_uid: str
    instances: int | None
    modalities: str
    study_date: str
    description: str


@dataclass(frozen=True)
class MoveResult:
    status: int | None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_sop_instances: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 0x0000 and self.failed == 0


def _qr_timeouts(timeouts: ScuTimeouts | None) -> ScuTimeouts:
    # A C-MOVE response comes only after the PACS has sent a whole sub-operation batch.
    return timeouts or ScuTimeouts(dimse=600.0, network=600.0)


def find_study(destination: Destination, study_uid: str, calling_ae: str, *,
               timeouts: ScuTimeouts | None = None, tls_config: DicomTLS | None = None) -> list[StudyMatch]:
    """C-FIND (Study Root, STUDY level) for one Study Instance UID. Raises :class:`QueryError`."""
    study_uid = validate_uid(study_uid, "StudyInstanceUID")
    ae = _make_ae(calling_ae, _qr_timeouts(timeouts))
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    query.NumberOfStudyRelatedInstances = ""
    query.ModalitiesInStudy = ""
    query.StudyDate = ""
    query.StudyDescription = ""
    assoc = _associate(ae, destination, tls_config)
    if not assoc.is_established:
        raise QueryError(_not_established(assoc))
    matches: list[StudyMatch] = []
    final: int | None = None
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            code = int(status.Status) if status is not None and "Status" in status else None
            if code in _PENDING and identifier is not None:
                count = identifier.get("NumberOfStudyRelatedInstances", None)
                matches.append(StudyMatch(
                    study_instance_uid=str(identifier.get("StudyInstanceUID", "")),
                    instances=int(count) if count not in (None, "") else None,
                    modalities="\\".join(identifier.get("ModalitiesInStudy", []) or [])
                    if not isinstance(identifier.get("ModalitiesInStudy", ""), str)
                    else str(identifier.get("ModalitiesInStudy", "")),
                    study_date=str(identifier.get("StudyDate", "")),
                    description=str(identifier.get("StudyDescription", "")),
                ))
            else:
                final = code
    finally:
        if assoc.is_established:
            assoc.release()
    if final != 0x0000:
        raise QueryError("C-FIND failed: " + ("no response" if final is None else f"status 0x{final:04X}"))
    return [m for m in matches if m.study_instance_uid == study_uid]


def move_study(destination: Destination, study_uid: str, calling_ae: str, move_destination: str, *,
               timeouts: ScuTimeouts | None = None, tls_config: DicomTLS | None = None) -> MoveResult:
    """C-MOVE (Study Root, STUDY level) of one study to the AE title ``move_destination``."""
    study_uid = validate_uid(study_uid, "StudyInstanceUID")
    ae = _make_ae(calling_ae, _qr_timeouts(timeouts))
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    assoc = _associate(ae, destination, tls_config)
    if not assoc.is_established:
        raise QueryError(_not_established(assoc))
    result = MoveResult(None)
    try:
        for status, reply in assoc.send_c_move(identifier, move_destination,
                                                StudyRootQueryRetrieveInformationModelMove):
            if status is None or "Status" not in status:
                result = MoveResult(None, result.completed, result.failed, result.warning)
                break
            code = int(status.Status)
            failed_uids = []
            if reply is not None and "FailedSOPInstanceUIDList" in reply:
                value = reply.FailedSOPInstanceUIDList
                failed_uids = [str(v) for v in (value if isinstance(value, list | tuple) else [value]) if v]
            result = MoveResult(
                status=None if code == _MOVE_PENDING else code,
                completed=int(status.get("NumberOfCompletedSuboperations", result.completed) or 0),
                failed=int(status.get("NumberOfFailedSuboperations", result.failed) or 0),
                warning=int(status.get("NumberOfWarningSuboperations", result.warning) or 0),
                failed_sop_instances=failed_uids or result.failed_sop_instances,
            )
    finally:
        if assoc.is_established:
            assoc.release()
    LOG.info("dicom.move.done destination=%s study=%s status=%s completed=%d failed=%d warning=%d",
             destination.name, study_uid, result.status, result.completed, result.failed, result.warning)
    return result
