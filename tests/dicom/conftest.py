"""Fixtures that write tiny hand-made DICOM files into tmp_path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from dicom_files import WriteCT, ct_dataset
from pydicom.uid import CTImageStorage

from medfed.data_contracts.dicom import DicomContract

@pytest.fixture
def write_ct(tmp_path: Path) -> WriteCT:
    """Write a CT file under tmp_path (a relative name) and return its path."""

    def write(name: str, pixels: Sequence[Sequence[int]] | np.ndarray, **options: object) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ct_dataset(pixels, **options).save_as(path, enforce_file_format=True)  # type: ignore[arg-type]
        return path

    return write


@pytest.fixture
def ct_contract() -> DicomContract:
    """A small contract for hand-made CT files."""
    return DicomContract.model_validate(
        {
            "name": "test_ct",
            "version": "1",
            "required_tags": ["SOPInstanceUID", "SeriesInstanceUID", "PixelSpacing"],
            "modalities": ["CT"],
            "sop_classes": [CTImageStorage],
            "geometry": {"rows": [1, 512], "columns": [1, 512], "pixel_spacing_mm": [0.1, 2.0]},
        }
    )
