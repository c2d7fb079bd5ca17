"""Reporting: turn findings into standard DICOM results. Pure builders: no I/O, no database."""

from reporting.sr import build_measurement_report, encode_part10

__all__ = ["build_measurement_report", "encode_part10"]
