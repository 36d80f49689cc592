"""Sample images leave a site only when its dataset is declared synthetic, and never from a burned-in series."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from medfed.data_contracts.report import ContractReport
from medfed.sites.datasets import DataSpec

pytest.importorskip("monai")
from medfed.sites.dicom.dataset import DicomDataset  # noqa: E402

COUNT = 12
SIZE = 8


def dataset(shareable: list[bool], synthetic: bool, sample_images: int = 8) -> DicomDataset:
    """Return a dataset whose image k is filled with the value k / COUNT, so a PNG tile names its row."""
    images = (torch.arange(COUNT, dtype=torch.float32) / COUNT).view(COUNT, 1, 1, 1).expand(COUNT, 1, SIZE, SIZE)
    labels = np.array([k % 2 for k in range(COUNT)])
    spec = DataSpec(dataset="ct", kind="dicom", test_fraction=0.5, split_seed=0,
                    options={"image_size": SIZE, "sample_images": sample_images})
    report = ContractReport(contract="test", contract_version="1", source="site")
    return DicomDataset("site_x", images.contiguous(), torch.tensor(labels, dtype=torch.float32), labels,
                        shareable, report, spec, synthetic=synthetic)


def tile_values(png: bytes) -> list[int]:
    """Return the grey value of each tile of a sample-image row (tiles are SIZE wide with 2-pixel gaps)."""
    pixels = np.asarray(Image.open(io.BytesIO(png)))
    return [int(pixels[0, start]) for start in range(0, pixels.shape[1], SIZE + 2)]


def test_samples_skip_burned_in_series() -> None:
    shareable = [k % 3 != 0 for k in range(COUNT)]  # rows 0, 3, 6 and 9 are flagged
    data = dataset(shareable, synthetic=True)
    test_rows = [int(round(float(x[0, 0, 0]) * COUNT)) for x in data.test_x]
    expected = [round(row / COUNT * 255) for row in test_rows if shareable[row]]

    png = data.sample_png()

    assert png is not None
    assert tile_values(png) == expected
    assert len(expected) < len(test_rows)  # the split put a flagged series in the test split


def test_samples_withheld_when_not_synthetic() -> None:
    assert dataset([True] * COUNT, synthetic=False).sample_png() is None


def test_samples_withheld_when_all_flagged() -> None:
    assert dataset([False] * COUNT, synthetic=True).sample_png() is None


def test_samples_capped_by_option() -> None:
    png = dataset([True] * COUNT, synthetic=True, sample_images=2).sample_png()

    assert png is not None
    assert len(tile_values(png)) == 2
