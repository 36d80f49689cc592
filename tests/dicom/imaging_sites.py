"""Synthetic DICOM sites and experiment configs for the imaging federation tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medfed.pipelines.config import ExperimentConfig
from medfed.sites.dicom.synth import DEFAULT_SITES, SynthConfig, write_sites

SITES = ("site_a", "site_b", "site_c")
# The smallest images the synthetic contract accepts (rows and columns >= 32).
IMAGE_SIZE = 32


def write_site_configs(
    data: Path, folder: Path, *, synthetic: dict[str, bool], contracts: dict[str, str] | None = None,
    policy: str = "refuse",
) -> list[Path]:
    """Write one site config per synthetic site folder under `data`; return their paths."""
    paths = []
    for site_id in SITES:
        contract = (contracts or {}).get(site_id, "synthetic_ct_lesion")
        path = folder / f"{site_id}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"site_id: {site_id}\n"
            f"data_root: {data / site_id}\n"
            "datasets:\n"
            f"  - {{name: ct_lesion, contract: {contract}, path: dicom, "
            f"synthetic: {str(synthetic[site_id]).lower()}}}\n"
            "allowed_models: [densenet121_2d, unet]\n"
            f"policy: {policy}\n"
            "min_count: 2\n"
            f"work_dir: {folder / 'state' / site_id}\n"
        )
        paths.append(path)
    return paths


def write_synthetic_sites(out: Path, studies: int = 12, seed: int = 5) -> Path:
    """Write the three default synthetic sites with small images under `out`."""
    write_sites(out, SynthConfig(studies_per_site=studies, slices=3, size=IMAGE_SIZE, seed=seed,
                                 sites=list(DEFAULT_SITES)))
    return out


def imaging_config(workdir: Path, site_configs: list[Path], **overrides: Any) -> ExperimentConfig:
    """Return a two-round DenseNet121 lesion classification federation that runs in seconds."""
    raw: dict[str, Any] = {
        "study": "imaging-test",
        "sites": [str(p) for p in site_configs],
        "data": {"dataset": "ct_lesion", "kind": "dicom", "test_fraction": 0.34, "split_seed": 1,
                 "options": {"image_size": IMAGE_SIZE, "target_spacing_mm": 1.0, "sample_images": 4}},
        "model": {"name": "densenet121_2d"},
        "rounds": 2,
        "training": {"steps": 2, "batch_size": 4, "optimizer": "adam", "lr": 0.001},
        "seed": 3,
        "min_sites": 2,
        "workdir": str(workdir),
        "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}"},
        "baselines": {"pooled": True, "local": False},
    }
    raw.update(overrides)
    return ExperimentConfig.model_validate(raw)
