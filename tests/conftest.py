"""Shared fixtures. Sets MEDFED_HOME to a fresh folder before medfed is imported,
so that Prefect's home and MLflow files of the tests never touch the user's."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_TEST_HOME = Path(tempfile.mkdtemp(prefix="medfed-test-home-"))
os.environ["MEDFED_HOME"] = str(_TEST_HOME)
os.environ.pop("MLFLOW_TRACKING_URI", None)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "heart_disease"
SITES = ("cleveland", "hungarian", "switzerland", "va")


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(_TEST_HOME, ignore_errors=True)


@pytest.fixture
def repo() -> Path:
    return REPO


def write_site(folder: Path, site_id: str, source: Path | None = None, *, policy: str = "drop",
               min_count: int = 10, contract: str = "uci_heart_disease", text: str | None = None) -> Path:
    """Create a site folder with its own copy of a data file and a site config; return the config path."""
    data_root = folder / site_id / "data"
    data_root.mkdir(parents=True)
    target = data_root / "table.csv"
    if text is not None:
        target.write_text(text)
    else:
        shutil.copyfile(source or DATA / site_id / f"processed.{site_id}.data", target)
    config = folder / site_id / "site.yaml"
    config.write_text(
        f"site_id: {site_id}\n"
        f"data_root: data\n"
        f"datasets:\n  - {{name: heart_disease, contract: {contract}, path: table.csv}}\n"
        f"policy: {policy}\nmin_count: {min_count}\nwork_dir: state\n"
    )
    return config


@pytest.fixture
def site_factory(tmp_path: Path):
    def make(site_id: str, **kwargs) -> Path:
        return write_site(tmp_path / "sites", site_id, **kwargs)

    return make
