"""C-STORE status codes (PS3.4 Annex B.2.3, PS3.7 Annex C) and what a sender does with each.

The codes our SCP answers are named here too, so both sides speak one vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CANNOT_UNDERSTAND",
    "DATASET_MISMATCH",
    "INVALID_UIDS",
    "OUT_OF_RESOURCES",
    "OUT_OF_RESOURCES_IO",
    "PROCESSING_FAILURE",
    "SOP_CLASS_NOT_SUPPORTED",
    "STUDY_MISMATCH",
    "SUCCESS",
    "TRANSFER_SYNTAX_NOT_SUPPORTED",
    "UNDECODABLE",
    "Classification",
    "Outcome",
    "classify_store_status",
]

Outcome = Literal["success", "retry", "dead"]

SUCCESS = 0x0000
# Warnings (the instance was stored): coercion of data elements, element discarded, data set
# does not match SOP class.
WARNING_COERCION = 0xB000
WARNING_ELEMENTS_DISCARDED = 0xB006
WARNING_DATASET_MISMATCH = 0xB007
# Refused: out of resources (0xA7xx) - the sender should retry later.
OUT_OF_RESOURCES = 0xA700  # the spool's disk is full
OUT_OF_RESOURCES_IO = 0xA701  # other local I/O failure, or a resource error from the sink
# Error: data set does not match SOP class (0xA9xx).
DATASET_MISMATCH = 0xA900
# Error: cannot understand (0xCxxx).
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0xC001  # unexpected failure inside the gateway (logged with the SOP UID)
UNDECODABLE = 0xC210  # the data set could not be decoded (as pynetdicom's storescp)
INVALID_UIDS = 0xC220  # Study/Series/SOP Instance UID missing, malformed, or not matching the request
# STOW-RS failure reasons (PS3.18 Table I.2-2) beyond the C-STORE ones above.
STUDY_MISMATCH = 0xA901  # the instance's Study Instance UID is not the study in the request URL
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122

# PS3.7 Annex C general statuses a C-STORE SCP may also answer.
_GENERAL_FAILURES: dict[int, tuple[Outcome, str]] = {
    0x0122: ("dead", "refused: SOP class not supported"),
    0x0124: ("dead", "refused: not authorized"),
    0x0210: ("dead", "duplicate invocation"),
    0x0211: ("dead", "unrecognized operation"),
    0x0212: ("dead", "mistyped argument"),
    0x0213: ("retry", "resource limitation"),
}


@dataclass(frozen=True)
class Classification:
    """What to do with one C-STORE answer. ``warning`` is set for success-with-warning statuses,
    which the caller logs."""

    outcome: Outcome
    reason: str
    warning: bool = False


def classify_store_status(status: int | None, error_comment: str | None = None) -> Classification:
    """Classify a C-STORE response status; ``None`` means no response arrived (network error,
    timeout, association rejected or aborted) and is retried."""
    comment = f" ({error_comment.strip()})" if error_comment and error_comment.strip() else ""
    if status is None:
        return Classification("retry", "no response from peer (network error, timeout or abort)")
    if status == SUCCESS:
        return Classification("success", "success")
    code = f"0x{status:04X}"
    if status == WARNING_COERCION:
        return Classification("success", f"{code} warning: coercion of data elements{comment}", True)
    if status == WARNING_ELEMENTS_DISCARDED:
        return Classification("success", f"{code} warning: elements discarded{comment}", True)
    if status == WARNING_DATASET_MISMATCH:
        return Classification(
            "success", f"{code} warning: data set does not match SOP class{comment}", True
        )
    if 0xB000 <= status <= 0xBFFF or status == 0x0001:
        return Classification("success", f"{code} warning{comment}", True)
    if 0xA700 <= status <= 0xA7FF:
        return Classification("retry", f"{code} refused: out of resources{comment}")
    if 0xA900 <= status <= 0xA9FF:
        return Classification("dead", f"{code} error: data set does not match SOP class{comment}")
    if 0xC000 <= status <= 0xCFFF:
        return Classification("dead", f"{code} error: cannot understand{comment}")
    if status in _GENERAL_FAILURES:
        outcome, text = _GENERAL_FAILURES[status]
        return Classification(outcome, f"{code} {text}{comment}")
    return Classification("dead", f"{code} failure: unrecognised status{comment}")
