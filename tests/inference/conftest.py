"""Fixtures for the inference tests (helpers: factory_dicom.py, factory_model.py)."""

from __future__ import annotations

import sys
from pathlib import Path

# The helper modules sit next to this file; make them importable whatever the import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))
