"""`medfed synth dicom`: reproducible, valid, learnable and different per site."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, RLELossless
from typer.testing import CliRunner

from medfed.cli_synth import app
from medfed.data_contracts.dicom import load_dicom_contract
from medfed.sites.dicom.index import scan_folder
from medfed.sites.dicom.labels import attach_labels
from medfed.sites.dicom.synth import LESION_HU, TISSUE_HU
from medfed.sites.dicom.volume import load_series

STUDIES = 6
SLICES = 3


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    result = CliRunner().invoke(app, ["dicom", str(out), "--studies", str(STUDIES), "--slices", str(SLICES),
                                      "--seed", "7"])
    assert result.exit_code == 0, result.output
    return out


def test_synth_writes_three_sites(synthetic: Path) -> None:
    for site in ("site_a", "site_b", "site_c"):
        files = list((synthetic / site / "dicom").rglob("*.dcm"))
        assert len(files) == STUDIES * SLICES
        assert (synthetic / site / "labels.csv").is_file()


def test_synth_is_reproducible(synthetic: Path, tmp_path: Path) -> None:
    from medfed.cli import app as medfed_app

    again = CliRunner().invoke(medfed_app, ["synth", "dicom", str(tmp_path), "--studies", str(STUDIES), "--slices", str(SLICES),
                                     "--seed", "7"])
    other = CliRunner().invoke(app, ["dicom", str(tmp_path / "other"), "--studies", str(STUDIES),
                                     "--slices", str(SLICES), "--seed", "8", "--sites", "1"])

    assert again.exit_code == 0
    assert other.exit_code == 0
    assert tree_digest(tmp_path / "site_b") == tree_digest(synthetic / "site_b")
    assert tree_digest(tmp_path / "other" / "site_a") != tree_digest(synthetic / "site_a")


def first_file(synthetic: Path, site: str):
    return dcmread(sorted((synthetic / site / "dicom").rglob("*.dcm"))[0])


def test_synth_sites_differ(synthetic: Path) -> None:
    a, b, c = (first_file(synthetic, site) for site in ("site_a", "site_b", "site_c"))

    assert [ds.Manufacturer for ds in (a, b, c)] == ["GE MEDICAL SYSTEMS", "SIEMENS", "Philips"]
    assert [ds.PhotometricInterpretation for ds in (a, b, c)] == ["MONOCHROME2", "MONOCHROME1", "MONOCHROME2"]
    assert c.file_meta.TransferSyntaxUID == RLELossless
    assert len({float(ds.PixelSpacing[0]) for ds in (a, b, c)}) == 3
    assert len({(float(ds.RescaleSlope), float(ds.RescaleIntercept)) for ds in (a, b, c)}) == 3
    for ds in (a, b, c):
        assert ds.SOPClassUID == CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.preamble == b"\x00" * 128


@pytest.mark.parametrize("site", ["site_a", "site_b", "site_c"])
def test_synth_site_meets_contract(synthetic: Path, site: str) -> None:
    contract = load_dicom_contract("synthetic_ct_lesion").model_copy(update={"min_series": 1})
    root = synthetic / site

    index = scan_folder(root, contract, subfolder="dicom", workers=1)
    items = attach_labels(index, contract)

    assert index.report.ok, index.report.summary()
    assert len(items) == STUDIES
    assert {item.label for item in items} <= {0, 1}
    for item in items:
        volume = load_series(index, item.entry.uid)
        assert volume.values.shape == (SLICES, 64, 64)
        body = volume.values[:, 32, 32]
        assert np.all(np.abs(body - TISSUE_HU) < 80) or item.label == 1
        if item.label == 1:
            mask = item.load_mask(root).astype(bool)
            assert mask.shape == volume.values.shape
            middle = SLICES // 2
            assert abs(volume.values[middle][mask[middle]].mean() - LESION_HU) < 15
            assert abs(volume.values[middle][~mask[middle] & (volume.values[middle] > -500)].mean() - TISSUE_HU) < 15
        else:
            assert item.mask_path is None
