"""Signed findings -> a FHIR DiagnosticReport with one Observation per nodule, for the EHR.

The resources are built and validated with the ``fhir.resources`` models. The package's R4B models
are used: DiagnosticReport, Observation and Bundle are unchanged between R4 (4.0.1) and R4B (4.3.0)
(R4B changed only medication-regulation and subscription resources), so the JSON is valid R4.

Output: one Bundle of type ``transaction`` (the same JSON can be written to a folder or POSTed to a
FHIR server's base URL) holding the DiagnosticReport and its Observations, linked by ``urn:uuid``.
The patient is referenced by identifier (the PACS Patient ID) since the EHR owns the Patient
resource; the study by its DICOM Study Instance UID; the DICOM SR by its SOP Instance UID.

Pure builder: no files, no network, no database.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from tamsoat.core.domain import ModelIdentity, Observer, ReportFinding

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_UID = "urn:dicom:uid"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"

_NODULE_TYPE_TEXT = {"solid": "solid", "part_solid": "part-solid", "ground_glass": "ground-glass"}


@dataclass(frozen=True)
class StudyInfo:
    study_instance_uid: str
    patient_id: str
    patient_name: str
    accession_number: str = ""


def build_diagnostic_report(
    study: StudyInfo,
    findings: Sequence[ReportFinding],
    algorithm: ModelIdentity,
    *,
    verifier: Observer,
    sr_sop_instance_uid: str,
    issued: datetime,
    lung_rads: str = "",
) -> Bundle:
    """A validated transaction Bundle: DiagnosticReport (final) + one Observation per finding (+ Lung-RADS).

    ``issued`` must be timezone-aware. Raises ValueError (pydantic's ValidationError is one) when a
    resource does not validate.
    """
    if issued.tzinfo is None:
        raise ValueError("issued must be timezone-aware")
    subject = _clean({"identifier": {"value": study.patient_id},
                      "display": _display_name(study.patient_name) if study.patient_name else None})
    interpreter = _clean({"display": _display_name(verifier.name)})
    when = issued.isoformat()
    category = [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging", "display": "Imaging"}]}]
    entries: list[dict[str, Any]] = []
    refs: list[dict[str, str]] = []

    for f in findings:
        components: list[dict[str, Any]] = [
            {"code": _coding(SNOMED, "81827009", "Diameter"),
             "valueQuantity": _quantity(f.diameter_mm, "mm")},
        ]
        if f.volume_mm3 is not None:
            components.append({"code": _coding(SNOMED, "118565006", "Volume"),
                               "valueQuantity": _quantity(f.volume_mm3, "mm3")})
        if f.confidence is not None and f.measured_by is None:
            components.append({"code": _coding(DCM, "111012", "Certainty of Finding"),
                               "valueQuantity": _quantity(f.confidence * 100.0, "%")})
        if f.nodule_type:
            components.append({"code": {"text": "Nodule type"},
                               "valueString": _NODULE_TYPE_TEXT.get(f.nodule_type, f.nodule_type)})
        x, y, z = f.center_mm
        components.append({"code": {"text": "Centre, DICOM patient coordinates (LPS), mm"},
                           "valueString": f"{x:.1f}, {y:.1f}, {z:.1f}"})
        if f.measured_by is not None:
            method = f"Measured by {_display_name(f.measured_by.name)}"
            performer = [_clean({"display": _display_name(f.measured_by.name)})]
        else:
            method = (f"Detected and measured by {algorithm.name} {algorithm.version} "
                      f"(device UID {algorithm.device_uid}); accepted by the radiologist")
            performer = [{"display": f"{algorithm.name} {algorithm.version}"}, interpreter]
        obs = Observation(**_clean({
            "status": "final",
            "category": category,
            "code": {**_coding(SNOMED, "27925004", "Nodule"), "text": f"Lung nodule ({f.tracking_id})"},
            "subject": subject,
            "effectiveDateTime": when,
            "issued": when,
            "performer": performer,
            "bodySite": _coding(SNOMED, "39607008", "Lung structure"),
            "method": {"text": method},
            "identifier": [{"system": DICOM_UID, "value": f"urn:oid:{f.tracking_uid}"}],
            "component": components,
        }))
        refs.append(_add(entries, obs))

    if lung_rads:
        obs = Observation(**_clean({
            "status": "final",
            "category": category,
            "code": {"text": "Lung-RADS v2022 assessment category"},
            "subject": subject,
            "effectiveDateTime": when,
            "issued": when,
            "performer": [interpreter],
            "valueCodeableConcept": {"text": lung_rads},
        }))
        refs.append(_add(entries, obs))

    conclusion = (f"{len(findings)} lung nodule(s) reported." if findings else "No lung nodule reported.")
    if lung_rads:
        conclusion += f" Lung-RADS v2022 category {lung_rads}."
    report = DiagnosticReport(**_clean({
        "status": "final",
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {**_coding(LOINC, "24627-2", "CT Chest"), "text": "CT chest, lung nodule screening (AI-assisted)"},
        "subject": subject,
        "effectiveDateTime": when,
        "issued": when,
        "identifier": [{"system": DICOM_UID, "value": f"urn:oid:{sr_sop_instance_uid}"}]
        + ([{"type": {"text": "Accession number"}, "value": study.accession_number}]
           if study.accession_number else []),
        "imagingStudy": [{"identifier": {"system": DICOM_UID, "value": f"urn:oid:{study.study_instance_uid}"}}],
        "resultsInterpreter": [interpreter],
        "result": refs,
        "conclusion": conclusion,
    }))
    _add(entries, report)
    return Bundle.model_validate({"type": "transaction", "entry": entries})


def _add(entries: list[dict[str, Any]], resource: Observation | DiagnosticReport) -> dict[str, str]:
    full_url = f"urn:uuid:{uuid.uuid4()}"
    entries.append({"fullUrl": full_url, "resource": resource,
                    "request": {"method": "POST", "url": resource.get_resource_type()}})
    return {"reference": full_url}


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": round(float(value), 3), "unit": unit, "system": UCUM, "code": unit}


def _display_name(pn: str) -> str:
    """A DICOM PN (Family^Given) as a display name (Given Family)."""
    family, _, rest = pn.partition("^")
    given = rest.split("^")[0] if rest else ""
    return f"{given} {family}".strip() or pn


def _clean(value: Any) -> Any:
    """Drop None and empty values: FHIR forbids empty elements."""
    if isinstance(value, dict):
        out = {k: _clean(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [v for v in (_clean(x) for x in value) if v not in (None, "", [], {})]
    return value
