"""`medfed site check` on a DICOM dataset: header scan and label manifest, relative paths, no values."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from typer.testing import CliRunner

from medfed.cli import app
from medfed.sites.dicom.synth import DEFAULT_SITES, SynthConfig, write_sites

runner = CliRunner()
PLANTED_NAME = "Checkplanted^Person"


def dicom_site(tmp_path: Path, studies: int = 6) -> Path:
    """Write one synthetic site and its config; return the config path."""
    write_sites(tmp_path / "data", SynthConfig(studies_per_site=studies, slices=2, size=32, seed=2,
                                               sites=[DEFAULT_SITES[2]]))
    config = tmp_path / "site.yaml"
    config.write_text(
        "site_id: site_c\ndata_root: data/site_c\n"
        "datasets:\n  - {name: ct_lesion, contract: synthetic_ct_lesion, path: dicom, synthetic: true}\n"
        "allowed_models: [densenet121_2d]\npolicy: refuse\n"
    )
    return config


def test_check_dicom_site_ready(tmp_path: Path) -> None:
    result = runner.invoke(app, ["site", "check", str(dicom_site(tmp_path))], env={"COLUMNS": "250"})

    assert result.exit_code == 0, result.output
    assert "12 of 12 files usable, 6 labelled complete series" in result.output
    assert "Site is ready" in result.output
    assert str(tmp_path / "data") not in result.output.replace("\n", "")  # paths are relative to the data root


def test_check_dicom_site_names_file_not_value(tmp_path: Path) -> None:
    config = dicom_site(tmp_path)
    first = sorted((tmp_path / "data" / "site_c" / "dicom").rglob("*.dcm"))[0]
    ds = dcmread(first)
    ds.PatientName = PLANTED_NAME
    ds.save_as(first)

    result = runner.invoke(app, ["site", "check", str(config)], env={"COLUMNS": "250"})

    assert result.exit_code == 1
    assert "breaks contract synthetic_ct_lesion" in result.output
    assert "empty_or_absent" in result.output
    assert str(first.relative_to(tmp_path / "data" / "site_c")) in result.output
    assert "Checkplanted" not in result.output


def test_check_dicom_site_missing_folder(tmp_path: Path) -> None:
    config = dicom_site(tmp_path)
    config.write_text(config.read_text().replace("path: dicom", "path: missing"))

    result = runner.invoke(app, ["site", "check", str(config)], env={"COLUMNS": "250"})

    assert result.exit_code == 1
    assert "DICOM folder 'missing' not found under the data root" in result.output
