"""The "dicom" data kind: a site's DICOM folder as train and test tensors for the site job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydicom import dcmread

from medfed.data_contracts.tabular import ContractViolation, Policy
from medfed.sites.config import DatasetBinding, SiteConfig
from medfed.sites.datasets import DataSpec, open_dataset
from medfed.sites.dicom.synth import DEFAULT_SITES, SynthConfig, write_sites

pytest.importorskip("monai")

STUDIES = 10


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sites")
    write_sites(out, SynthConfig(studies_per_site=STUDIES, slices=3, seed=3, sites=list(DEFAULT_SITES)))
    return out


def site_config(root: Path, site_id: str, policy: Policy = Policy.REFUSE) -> SiteConfig:
    return SiteConfig(
        site_id=site_id, data_root=root,
        datasets=[DatasetBinding(name="ct_lesion", contract="synthetic_ct_lesion", path="dicom")],
        allowed_models=["densenet121_2d"], policy=policy,
    )


@pytest.mark.parametrize("site_id", ["site_a", "site_b", "site_c"])
def test_dicom_dataset_classification(synthetic: Path, site_id: str) -> None:
    spec = DataSpec(dataset="ct_lesion", kind="dicom", test_fraction=0.3, split_seed=1)

    data = open_dataset(site_config(synthetic / site_id, site_id), spec)
    x, y = next(data.train_batches(4, torch.Generator().manual_seed(0)))

    assert data.num_train + data.num_test == STUDIES
    assert data.num_test == 3
    assert x.shape == (4, 1, 64, 64)
    assert x.dtype == torch.float32
    assert float(x.min()) >= 0.0
    assert float(x.max()) <= 1.0
    assert set(y.tolist()) <= {0.0, 1.0}
    assert data.report.ok
    assert data.statistics(min_count=1) is None


def test_dicom_dataset_segmentation_masks(synthetic: Path) -> None:
    spec = DataSpec(dataset="ct_lesion", kind="dicom", options={"task": "segmentation"}, split_seed=1)
    labels_spec = DataSpec(dataset="ct_lesion", kind="dicom", split_seed=1)
    config = site_config(synthetic / "site_c", "site_c")

    masks = open_dataset(config, spec)
    labels = open_dataset(config, labels_spec)

    assert masks.train_y.shape == (masks.num_train, 1, 64, 64)
    lesion_pixels = masks.train_y.sum(dim=(1, 2, 3))
    assert ((lesion_pixels > 0).float() == labels.train_y).all()
    inside = masks.train_x[masks.train_y.bool()]
    outside = masks.train_x[(~masks.train_y.bool()) & (masks.train_x > 0.1)]
    assert float(inside.mean()) > float(outside.mean()) + 0.05  # 40 HU of contrast in a 500 HU window


def test_dicom_dataset_spacing_normalised(synthetic: Path) -> None:
    """After resampling to 0.7 mm the phantom body has about the same width at every site."""
    widths = []
    for site_id in ("site_a", "site_b", "site_c"):
        data = open_dataset(site_config(synthetic / site_id, site_id), DataSpec(dataset="ct_lesion", kind="dicom"))
        body_columns = (data.train_x[0, 0] > 0.1).any(dim=0).sum()
        widths.append(int(body_columns))

    assert max(widths) - min(widths) <= 2


def test_dicom_dataset_refuses_broken_contract(synthetic: Path, tmp_path: Path) -> None:
    root = tmp_path / "site"
    for path in (synthetic / "site_a").rglob("*"):
        if path.is_file():
            target = root / path.relative_to(synthetic / "site_a")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    first = sorted((root / "dicom").rglob("*.dcm"))[0]
    ds = dcmread(first)
    ds.PatientName = "Someone^Real"
    ds.save_as(first)

    with pytest.raises(ContractViolation, match="empty_or_absent") as caught:
        open_dataset(site_config(root, "site_a"), DataSpec(dataset="ct_lesion", kind="dicom"))
    dropped = open_dataset(site_config(root, "site_a", Policy.DROP), DataSpec(dataset="ct_lesion", kind="dicom"))

    assert "Someone" not in str(caught.value)
    assert dropped.num_train + dropped.num_test == STUDIES - 1


def test_tabular_path_imports_no_monai() -> None:
    """The "dicom" kind is listed in DATASET_KINDS, but MONAI (seconds to import) loads only when it is opened."""
    code = (
        "import sys\n"
        "from medfed.sites.datasets import DATASET_KINDS\n"
        "import medfed.sites.job\n"
        "assert 'dicom' in DATASET_KINDS\n"
        "print('monai' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "False"
