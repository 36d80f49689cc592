"""Planted patient values stay out of every log, MLflow record, artifact and exchanged file of a federation.

Two sites train on files that carry a patient name and birth date in
standard tags, a private block and a three-level nested sequence, under a
contract without de-identification rules, so the values pass through
scanning, ingestion and training. The third site checks the shipped contract,
which rejects its planted files and reports them by path (policy drop). The
federation is a two-round segmentation with a tiny UNet, so it also shows
Dice per round in MLflow.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from imaging_sites import SITES, imaging_config, write_site_configs, write_synthetic_sites
from mlflow.tracking import MlflowClient
from pydicom import dcmread
from test_privacy import NEEDLES, plant

from medfed.pipelines.federation import federation_flow
from medfed.settings import medfed_home

pytest.importorskip("monai")

SHIPPED_CONTRACT = Path(__file__).resolve().parents[2] / "data_contracts" / "synthetic_ct_lesion.yaml"
# Studies of site_c that get the planted values; the other studies keep the site above min_series.
PLANTED_AT_SITE_C = 4
TINY_UNET = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


def plant_site(dicom_folder: Path, studies: int | None = None) -> int:
    """Plant the patient values in every file of the first `studies` studies (all when None)."""
    folders = sorted(p for p in dicom_folder.iterdir() if p.is_dir())[:studies]
    planted = 0
    for folder in folders:
        for path in sorted(folder.glob("*.dcm")):
            ds = dcmread(path)
            plant(ds)
            ds.save_as(path)
            planted += 1
    return planted


def permissive_contract(folder: Path) -> Path:
    """Write the shipped contract without de-identification rules, so planted files are used for training."""
    raw = yaml.safe_load(SHIPPED_CONTRACT.read_text())
    raw["name"] = "synthetic_ct_lesion_not_deidentified"
    raw["deidentification"] = {}
    path = folder / "not_deidentified.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def files_containing(folder: Path, needles: tuple[str, ...]) -> dict[str, list[str]]:
    """Return, per needle, the files under `folder` whose bytes contain it (UTF-8 or UTF-16)."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for needle in needles:
            if needle.encode() in data or needle.encode("utf-16-le") in data:
                found.setdefault(needle, []).append(str(path.relative_to(folder)))
    return found


def test_planted_values_absent_from_federation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    data = write_synthetic_sites(tmp_path / "data", studies=10, seed=11)
    planted = [plant_site(data / "site_a" / "dicom"), plant_site(data / "site_b" / "dicom"),
               plant_site(data / "site_c" / "dicom", PLANTED_AT_SITE_C)]
    permissive = str(permissive_contract(tmp_path))
    site_configs = write_site_configs(
        data, tmp_path / "sites", synthetic={s: True for s in SITES}, policy="drop",
        contracts={"site_a": permissive, "site_b": permissive},
    )
    workdir = tmp_path / "work"
    config = imaging_config(
        workdir, site_configs, model={"name": "unet", "kwargs": TINY_UNET},
        data={"dataset": "ct_lesion", "kind": "dicom", "test_fraction": 0.34, "split_seed": 1,
              "options": {"task": "segmentation", "image_size": 32, "target_spacing_mm": 1.0}},
    )
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # planting logged pydicom's own warnings, which quote the invalid date
    capfd.readouterr()

    summary = federation_flow(config)

    captured = capfd.readouterr()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    client = MlflowClient(summary.tracking_uri)
    run = client.get_run(summary.run_id)
    records = [*run.data.params.items(), *run.data.tags.items(), *run.data.metrics]
    records_text = "\n".join(map(str, records))

    assert planted == [30, 30, 3 * PLANTED_AT_SITE_C]
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(summary.run_id, "dice_mean")] == [1, 2]
    assert [m.step for m in client.get_metric_history(summary.run_id, "site/site_a/dice")] == [1, 2]
    assert len(caplog.records) > 20  # the federation logged its lifecycle, so the search below is not vacuous
    report = client.download_artifacts(summary.run_id, "sites/site_c/contract_report.json")
    assert "empty_or_absent" in Path(report).read_text()  # site_c's planted files were found and dropped
    for needle in NEEDLES:
        assert needle not in logged, needle
        assert needle not in captured.err, needle
        assert needle not in captured.out, needle
        assert needle not in records_text, needle
    # MLflow's SQLite file and artifacts, the exchange store, and Prefect's home with its database.
    assert files_containing(workdir, NEEDLES) == {}
    assert files_containing(medfed_home(), NEEDLES) == {}
    assert files_containing(tmp_path / "sites" / "state", NEEDLES) == {}  # egress ledgers and local state
    # The search finds planted values where they are: in the site's own files.
    assert set(files_containing(data / "site_a", NEEDLES)) == set(NEEDLES)
