"""`medfed site check` on real site folders: ready, not ready, and no values in the output."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from medfed.cli import app

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_check_ready_site_exits_zero(site_factory) -> None:
    result = runner.invoke(app, ["site", "check", str(site_factory("cleveland"))], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Site is ready" in result.output
    assert "303 of 303 rows usable" in result.output


def test_check_broken_data_exits_nonzero_without_values(site_factory) -> None:
    rows = (REPO / "data/heart_disease/cleveland/processed.cleveland.data").read_text().splitlines()
    fields = rows[7].split(",")
    fields[4] = "987.654"  # chol far above its range
    rows[7] = ",".join(fields)
    config = site_factory("cleveland", policy="refuse", text="\n".join(rows) + "\n")
    result = runner.invoke(app, ["site", "check", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "not ready" in result.output
    assert "in_range" in result.output
    assert "987.654" not in result.output and "987" not in result.output


def test_check_invalid_config_names_field(tmp_path: Path) -> None:
    config = tmp_path / "site.yaml"
    config.write_text("site_id: Bad Id\ndata_root: .\ndatasets: []\n")
    result = runner.invoke(app, ["site", "check", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "site_id" in result.output


def test_check_dataset_path_outside_root_rejected(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    config = tmp_path / "site.yaml"
    config.write_text(
        "site_id: escape\ndata_root: data\n"
        "datasets:\n  - {name: heart_disease, contract: uci_heart_disease, path: ../../etc/passwd}\n"
    )
    result = runner.invoke(app, ["site", "check", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "leaves data_root" in result.output
