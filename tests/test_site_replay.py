"""A site serves each request once; a replayed request is rejected and nothing more leaves."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfed.sites.agent import SiteAgent
from medfed.sites.config import load_site_config
from medfed.sites.datasets import DataSpec
from medfed.sites.exchange_store import LocalFolderStore
from medfed.sites.job import ModelRequest, RequestRejected, RoundRequest
from medfed.sites.ledger import EgressLedger
from medfed.sites.preprocessing import TabularFeatures
from tests_support import write_site


def test_replayed_request_rejected(tmp_path: Path) -> None:
    config = load_site_config(write_site(tmp_path / "sites", "cleveland"))
    ledger = EgressLedger.for_state_dir(config.state_dir, config.site_id)
    agent = SiteAgent(config, LocalFolderStore(tmp_path / "exchange"), ledger)
    request = RoundRequest(
        federation_id="fed-replay", round=0, phase="statistics",
        model=ModelRequest(name="logistic_regression", kwargs={"in_features": 2}),
        data=DataSpec(dataset="heart_disease", features=TabularFeatures(numeric=["age", "thalach"])),
    )
    agent.serve(request)
    entries = ledger.verify().entries
    assert entries > 0
    with pytest.raises(RequestRejected, match="already served statistics of round 0"):
        agent.serve(request)
    assert ledger.verify().entries == entries
    agent.serve(request.model_copy(update={"federation_id": "fed-other"}))
    assert ledger.verify().entries > entries
