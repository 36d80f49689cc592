"""FedBN through the real site job: normalisation layers never appear in a payload file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from medfed.models import build_model
from medfed.pipelines.strategies import build_strategy
from medfed.pipelines.strategy_support import local_keys_for, site_training_config
from medfed.sites.config import SiteConfig
from medfed.sites.datasets import DataSpec
from medfed.sites.exchange import validate_update
from medfed.sites.exchange_store import LocalFolderStore, get_state, put_state
from medfed.sites.job import ModelRequest, RoundRequest, SiteJob
from medfed.sites.local_layers import SiteStateStore
from medfed.sites.preprocessing import merge_statistics
from medfed.sites.strategy_hooks import LOCAL_LAYERS_STATE, StrategyHooks
from medfed.sites.training import LocalTrainingConfig

REPO = Path(__file__).resolve().parents[2]
FEDERATION = "fedbn-test"
NORM_KEYS = {"net.1.weight", "net.1.bias", "net.1.running_mean", "net.1.running_var", "net.1.num_batches_tracked"}
FEATURES = {
    "numeric": ["age", "trestbps", "chol", "thalach", "oldpeak"],
    "binary": ["sex", "fbs", "exang"],
    "categorical": {"cp": [1, 2, 3, 4], "restecg": [0, 1, 2]},
}


@pytest.fixture
def site(tmp_path: Path) -> tuple[SiteJob, LocalFolderStore]:
    data_root = tmp_path / "cleveland" / "data"
    data_root.mkdir(parents=True)
    shutil.copyfile(REPO / "data" / "heart_disease" / "cleveland" / "processed.cleveland.data", data_root / "table.csv")
    config = SiteConfig(
        site_id="cleveland",
        data_root=data_root,
        datasets=[{"name": "heart_disease", "contract": "uci_heart_disease", "path": "table.csv"}],
        policy="drop",
        work_dir=tmp_path / "cleveland" / "state",
    )
    store = LocalFolderStore(tmp_path / "exchange")
    return SiteJob(config, store), store


def test_fedbn_layers_never_leave_site(site):
    job, store = site
    strategy = build_strategy({"name": "fedbn"})
    hints = strategy.site_hints()
    data = DataSpec(dataset="heart_disease", features=FEATURES)
    model_request = ModelRequest(
        name="mlp", kwargs={"in_features": data.features.num_inputs, "normalization": "batch", "dropout": 0.0}
    )
    training = site_training_config(LocalTrainingConfig(steps=6, batch_size=4, lr=0.05), hints)
    base = RoundRequest(federation_id=FEDERATION, round=0, phase="statistics", model=model_request,
                        data=data, training=training)
    statistics = job.run(base).statistics
    plan = merge_statistics([statistics], data.features)
    local_keys = local_keys_for(model_request, hints)
    assert local_keys == NORM_KEYS

    torch.manual_seed(0)
    global_state = build_model("mlp", **model_request.kwargs).state_dict()
    for round_number in (1, 2):
        global_key, _, _ = put_state(store, f"{FEDERATION}/round_{round_number - 1:04d}/global", global_state,
                                     kind="global_model", federation_id=FEDERATION, round_number=round_number - 1,
                                     model_name="mlp")
        request = base.model_copy(update={"round": round_number, "phase": "train", "global_model": global_key,
                                          "preprocessing": plan})
        result = job.run(request)
        manifest, tensors = get_state(store, result.update, site_id="cleveland")
        # The centre accepts the update only because it allows exactly these keys to be missing.
        validate_update(manifest, tensors, reference=global_state, federation_id=FEDERATION,
                        round_number=round_number, site_id="cleveland", allow_missing=local_keys)
        global_state = {**global_state, **{k: v for k, v in tensors.items()}}

    payload_files = sorted((store.root / FEDERATION).rglob("updates/*.safetensors"))
    assert len(payload_files) == 2
    for path in payload_files:
        with safe_open(str(path), framework="pt") as handle:
            sent = set(handle.keys())
        assert sent.isdisjoint(NORM_KEYS), path.name
        assert "net.0.weight" in sent

    saved = SiteStateStore(job.config.state_dir, FEDERATION).load(LOCAL_LAYERS_STATE)
    assert saved is not None
    assert set(saved) == NORM_KEYS
    # The site trained its batch norm: its running mean moved away from the initial zeros.
    assert float(saved["net.1.running_mean"].abs().sum()) > 0
    assert int(saved["net.1.num_batches_tracked"]) == 12

    # A fresh global model gets the site's own layers back before the next round or evaluation.
    fresh = build_model("mlp", **model_request.kwargs)
    hooks = StrategyHooks(site_id="cleveland", state_dir=job.config.state_dir, federation_id=FEDERATION,
                          training=training, store=store)
    hooks.restore_local_layers(fresh)
    assert torch.equal(fresh.state_dict()["net.1.running_mean"], saved["net.1.running_mean"])
