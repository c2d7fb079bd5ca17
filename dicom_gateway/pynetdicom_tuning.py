"""Every change the gateway makes to pynetdicom, in one place.

pynetdicom is correct but slow on a busy receive path; the gateway changes two things, each in a
module of its own with its reasons and its tests:

* :mod:`dicom_gateway.reactor`: its polling loops (1 ms sleeps) become event-driven;
* :mod:`dicom_gateway.command_set`: command sets are encoded directly, not through pydicom.

Both follow pynetdicom 3.0's code, so :func:`install` applies them only to the versions in
:data:`SUPPORTED_VERSIONS`; with any other version it logs a warning and leaves pynetdicom as it is
(slower, still correct), and ``tests/dicom_gateway/test_reactor.py`` fails so the copies get
reviewed against the new version. The SCP and the SCU call :func:`install` before they create an AE.
"""

from __future__ import annotations

import logging
import threading

import pynetdicom

from dicom_gateway import command_set, reactor

__all__ = ["SUPPORTED_VERSIONS", "install", "is_installed"]

LOG = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("3.0.",)

_lock = threading.Lock()
_installed = False


def is_installed() -> bool:
    return _installed


def install() -> bool:
    """Apply the changes once (idempotent, thread-safe). Returns whether they are in place."""
    global _installed
    with _lock:
        if _installed:
            return True
        version = str(pynetdicom.__version__)
        if not version.startswith(SUPPORTED_VERSIONS):
            LOG.warning("dicom.pynetdicom_tuning.not_installed pynetdicom=%s supported=%s", version,
                        ",".join(SUPPORTED_VERSIONS))
            return False
        reactor.install()
        command_set.install()
        _installed = True
        return True
