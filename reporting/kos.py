"""IHE IOCM rejection note: a Key Object Selection Document that withdraws objects already sent.

A PACS that supports IHE Imaging Object Change Management hides (or deletes) the instances a
rejection note references. tamsoat uses it to withdraw an AI result it sent before a radiologist
rejected it (a preliminary, UNVERIFIED SR). Nothing is ever deleted silently.

Structure (PS3.3 A.35.4 Key Object Selection Document IOD; PS3.16 TID 2010 "Key Object Selection"):

* document title from CID 7011 "Rejected for Quality Reasons" (113001, DCM) by default;
* the radiologist who rejected it as person observer, the service as device observer (TID 1002/1004);
* a "Key Object Description" (113012, DCM) with the reason in words;
* one IMAGE/COMPOSITE reference per withdrawn instance, and the same instances in the Current
  Requested Procedure Evidence Sequence;
* the note lives in the withdrawn objects' study, in a series of its own.

Pure builder: no files, no network, no database.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
from highdicom.sr import (
    CodedConcept,
    DeviceObserverIdentifyingAttributes,
    ObserverContext,
    PersonObserverIdentifyingAttributes,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, TM

from reporting import codes as rc
from reporting.sr import SR_MANUFACTURER, SR_MODEL_NAME, _header_copy, _is_uid, _person_name
from tamsoat import __version__ as _TAMSOAT_VERSION
from tamsoat.core.domain import Observer

#: CID 7011 "Rejected for Repository Reasons" and IOCM titles.
REJECTED_FOR_QUALITY_REASONS = CodedConcept(value="113001", scheme_designator="DCM",
                                            meaning="Rejected for Quality Reasons")
REJECTED_FOR_PATIENT_SAFETY_REASONS = CodedConcept(value="113037", scheme_designator="DCM",
                                                   meaning="Rejected for Patient Safety Reasons")
KOS_SERIES_DESCRIPTION = "Rejection note (IOCM)"
KEY_OBJECT_SELECTION_DOCUMENT = "1.2.840.10008.5.1.4.1.1.88.59"


def build_rejection_note(
    rejected: Sequence[Dataset],
    *,
    observer: Observer,
    institution: str,
    reason: str,
    title: CodedConcept = REJECTED_FOR_QUALITY_REASONS,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = 9002,
    content_datetime: datetime | None = None,
) -> Dataset:
    """A Key Object Selection Document that rejects (withdraws) every instance in ``rejected``.

    ``rejected`` are the objects to withdraw (headers are enough), all from one study. ``observer``
    is the person on whose decision they are withdrawn; ``reason`` says why, in words.
    Raises ValueError for no objects, objects from several studies, or invalid UIDs.
    """
    if not rejected:
        raise ValueError("a rejection note needs at least one object to reject")
    headers = [_header_copy(ds) for ds in rejected]
    studies = {str(ds.StudyInstanceUID) for ds in headers}
    if len(studies) != 1:
        raise ValueError(f"the rejected objects span {len(studies)} studies; a rejection note covers one study")
    for uid in (series_instance_uid, sop_instance_uid):
        if uid is not None and not _is_uid(uid):
            raise ValueError(f"not a valid DICOM UID: {uid!r}")
    when = content_datetime if content_datetime is not None else datetime.now()
    person = ObserverContext(
        observer_type=rc.OBSERVER_PERSON,
        observer_identifying_attributes=PersonObserverIdentifyingAttributes(
            name=_person_name(observer.name), organization_name=observer.organization or None,
        ),
    )
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=SR_MODEL_NAME, manufacturer_name=SR_MANUFACTURER,
        ),
    )
    content = hd.ko.KeyObjectSelection(
        document_title=title,
        referenced_objects=headers,
        observer_person_context=person,
        observer_device_context=device,
        description=(reason or title.meaning)[:1024],
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=headers,
        content=content,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer=SR_MANUFACTURER,
        institution_name=institution,
        content_date=when.date(),
        content_time=when.time(),
        series_date=when.date(),
        series_time=when.time(),
        series_description=KOS_SERIES_DESCRIPTION,
        software_versions=_TAMSOAT_VERSION,
    )
    kos.SpecificCharacterSet = "ISO_IR 192"
    kos.InstanceCreationDate = DA(when.date())
    kos.InstanceCreationTime = TM(when.time().replace(microsecond=0))
    return kos
