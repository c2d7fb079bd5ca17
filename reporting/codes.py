"""Coded concepts used in tamsoat's DICOM results, with where each comes from.

Every concept here is a standard one (DCM, SCT, UCUM, UMLS); nothing private. The
references are to DICOM PS3.16 (Content Mapping Resource) unless a line says otherwise.
"""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

# --- TID 1500 Measurement Report: root -----------------------------------------------------------

#: Document title, CID 7021 "Measurement Report Document Title".
REPORT_TITLE = CodedConcept.from_code(codes.DCM.ImagingMeasurementReport)  # (126000, DCM)

#: Procedure Reported (TID 1500 row 4, DCID 100 "Quantitative Diagnostic Imaging Procedure",
#: extensible). It names the imaging procedure that was analysed, not the algorithm. CID 100 has
#: only "CT unspecified body region" for CT, so the more specific SNOMED CT procedure concept
#: 169069000 "Computed tomography of chest" is used, as TID 1500 allows with a DCID.
PROCEDURE_CT_CHEST = CodedConcept(value="169069000", scheme_designator="SCT", meaning="CT of chest")

#: TID 1500 row 12, container for report-level qualitative evaluations.
QUALITATIVE_EVALUATIONS = CodedConcept(value="C0034375", scheme_designator="UMLS", meaning="Qualitative Evaluations")

#: Present/absent values, CID 240 "Present-Absent"; "Nodule: Absent" is the statement of a
#: report with no findings (TID 1500 rows 12-13).
ABSENT = CodedConcept.from_code(codes.SCT.Absent)  # (272519000, SCT)

# --- TID 1411 Volumetric ROI measurement group: one per finding --------------------------------

#: Finding Category, CID 7150 "Segmentation Property Category"; same as the SEG would use.
FINDING_CATEGORY = CodedConcept.from_code(codes.SCT.MorphologicallyAbnormalStructure)  # 49755003

#: Finding (type), CID 7151 "Segmentation Property Type" / CID 6102 / CID 7159.
NODULE = CodedConcept.from_code(codes.SCT.Nodule)  # (27925004, SCT)

#: Finding Site, CID 4 "Anatomic Region" / CID 6100.
LUNG = CodedConcept.from_code(codes.SCT.Lung)  # (39607008, SCT)

# --- TID 1419 ROI measurements --------------------------------------------------------------------

#: CID 7469 "Generic Intensity and Size Measurement".
DIAMETER = CodedConcept.from_code(codes.SCT.Diameter)  # (81827009, SCT)
VOLUME = CodedConcept.from_code(codes.SCT.Volume)  # (118565006, SCT)

#: The AI's confidence. DICOM has no "AI confidence" concept in CID 7469; the concept DICOM's own
#: CAD templates use for exactly this, how sure the detector is that a finding is real, is
#: (111012, DCM, "Certainty of Finding"), with UNITS = (%, UCUM, "Percent") and a value of 0-100
#: (TID 4104/4108/4127 rows "Certainty of Finding"). TID 1419 takes measurement concept names from
#: an extensible DCID, so the same concept and unit are used here.
CERTAINTY_OF_FINDING = CodedConcept.from_code(codes.DCM.CertaintyOfFinding)  # (111012, DCM)

#: Free text where DICOM has no coded concept: the nodule's attenuation type (solid, part-solid,
#: ground-glass) in a measurement group and the study's Lung-RADS category under Qualitative
#: Evaluations. (121106, DCM, "Comment") is the standard TEXT concept for remarks; no code is invented.
COMMENT = CodedConcept.from_code(codes.DCM.Comment)  # (121106, DCM)

#: UCUM units (CID 7181 / CID 82).
MILLIMETER = CodedConcept.from_code(codes.UCUM.Millimeter)  # mm
CUBIC_MILLIMETER = CodedConcept.from_code(codes.UCUM.CubicMillimeter)  # mm3
PERCENT = CodedConcept.from_code(codes.UCUM.Percent)  # %

# --- Equipment ------------------------------------------------------------------------------------

#: Contributing Equipment purpose for the algorithm, CID 7005 "Contributing Equipment Purpose of
#: Reference": the algorithm processed the source images into a new instance (this SR), which is
#: "Processing Equipment" (109102); "Acquisition Equipment" (109101) is the scanner and "Modifying
#: Equipment" (109103) would mean the source instances were changed in place.
PROCESSING_EQUIPMENT = CodedConcept.from_code(codes.DCM.ProcessingEquipment)  # (109102, DCM)

#: Observer types, CID 270.
OBSERVER_DEVICE = CodedConcept.from_code(codes.DCM.Device)  # (121007, DCM)
OBSERVER_PERSON = CodedConcept.from_code(codes.DCM.Person)  # (121006, DCM)
