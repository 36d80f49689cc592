"""The MONAI reader and the MONAI imaging models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dicom_files import WriteCT

from medfed.models import build_model, get_spec
from medfed.sites.dicom.index import SeriesNotFoundError
from medfed.sites.dicom.volume import load_files

monai_transforms = pytest.importorskip("monai.transforms")
from medfed.sites.dicom.reader import MedfedDicomReader, MultipleSeriesError, load_image  # noqa: E402


def write_series(write_ct: WriteCT, folder: str, series_uid: str, offset: int) -> None:
    for k in (2, 0, 1):
        pixels = np.arange(6).reshape(2, 3) + 10 * k + offset
        write_ct(f"{folder}/{k}.dcm", pixels, position=(-5.0, 4.0, 3.0 * k), series_uid=series_uid,
                 spacing=(0.5, 0.25), intercept=0.0)


def test_load_image_matches_volume(tmp_path: Path, write_ct: WriteCT) -> None:
    write_series(write_ct, "one", "1.2.3.1", 0)
    volume = load_files(tmp_path / "one", ["0.dcm", "1.dcm", "2.dcm"], "")

    image = load_image()(str(tmp_path / "one"))

    assert tuple(image.shape) == (1, 3, 2, 3)  # channel, column, row, slice
    np.testing.assert_array_equal(image[0].numpy(), volume.values.transpose(2, 1, 0))
    # RAS affine: LPS x and y flipped, columns 0.25 mm apart, rows 0.5 mm, slices 3 mm.
    np.testing.assert_allclose(image.affine.numpy()[:3, :3], np.diag([-0.25, -0.5, 3.0]))
    np.testing.assert_allclose(image.affine.numpy()[:3, 3], [5.0, -4.0, 0.0])


def test_load_image_then_monai_transforms(tmp_path: Path, write_ct: WriteCT) -> None:
    write_series(write_ct, "one", "1.2.3.1", 0)
    pipeline = monai_transforms.Compose([
        load_image(),
        monai_transforms.ScaleIntensityRange(a_min=0, a_max=25, b_min=0.0, b_max=1.0, clip=True),
    ])

    image = pipeline(str(tmp_path / "one"))

    assert float(image.max()) == 1.0
    assert float(image[0, 0, 0, 0]) == 0.0


def test_load_image_two_series_error(tmp_path: Path, write_ct: WriteCT) -> None:
    write_series(write_ct, "both", "1.2.3.1", 0)
    write_series(write_ct, "both/second", "1.2.3.2", 100)

    with pytest.raises(MultipleSeriesError, match="2 series"):
        load_image()(str(tmp_path / "both"))
    chosen = load_image(MedfedDicomReader(series_uid="1.2.3.2"))(str(tmp_path / "both"))
    assert float(chosen[0, 0, 0, 0]) == 100.0
    with pytest.raises(SeriesNotFoundError):
        load_image(MedfedDicomReader(series_uid="1.2.3.9"))(str(tmp_path / "both"))


def test_registry_builds_imaging_models() -> None:
    classifier = build_model("densenet121_2d")
    segmenter = build_model("unet")

    assert classifier(torch.zeros(2, 1, 32, 32)).shape == (2,)
    assert segmenter(torch.zeros(2, 1, 32, 32)).shape == (2, 1, 32, 32)
    assert get_spec("densenet121_2d").input_kind == "image2d"
    assert get_spec("unet").task == "segmentation"


def test_registry_import_skips_monai() -> None:
    code = (
        "import sys, medfed.models, medfed.cli_synth, medfed.sites.dicom.index, medfed.sites.dicom.volume; "
        "sys.exit(1 if 'monai' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
