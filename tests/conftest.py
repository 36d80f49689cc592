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

from tests_support import write_site  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(_TEST_HOME, ignore_errors=True)


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def site_factory(tmp_path: Path):
    def make(site_id: str, **kwargs) -> Path:
        return write_site(tmp_path / "sites", site_id, **kwargs)

    return make
