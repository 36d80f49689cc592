"""Update validation and the exchange format, on real files in a local store."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from medfed.sites.exchange import ExchangeError, validate_update
from medfed.sites.exchange_store import LocalFolderStore, get_state, put_state
from tests_support import assert_no_pickle

FEDERATION = "fed-test"


def _reference() -> dict[str, torch.Tensor]:
    return {"linear.weight": torch.zeros(1, 3), "linear.bias": torch.zeros(1),
            "bn.num_batches_tracked": torch.tensor(0, dtype=torch.int64)}


def _send(store: LocalFolderStore, state: dict[str, torch.Tensor], *, round_number: int = 2,
          site: str = "hungarian", federation: str = FEDERATION) -> str:
    key, _, _ = put_state(store, f"{federation}/round_{round_number:04d}/updates/{site}", state,
                          kind="site_update", federation_id=federation, round_number=round_number,
                          model_name="logistic_regression", site_id=site, num_examples=12)
    return key


def _receive_and_validate(store: LocalFolderStore, key: str, *, round_number: int = 2,
                          site: str = "hungarian") -> None:
    manifest, tensors = get_state(store, key, site_id=site)
    validate_update(manifest, tensors, reference=_reference(), federation_id=FEDERATION,
                    round_number=round_number, site_id=site)


def test_valid_update_round_trips(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    state = {k: v + 1 for k, v in _reference().items()}
    key = _send(store, state)
    manifest, tensors = get_state(store, key)
    assert manifest.num_examples == 12
    assert torch.equal(tensors["linear.weight"], state["linear.weight"])
    assert tensors["bn.num_batches_tracked"].dtype == torch.int64
    _receive_and_validate(store, key)


def test_nan_update_rejected_naming_site_and_key(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    state = _reference()
    state["linear.weight"] = torch.tensor([[0.0, float("nan"), 1.0]])
    key = _send(store, state)
    with pytest.raises(ExchangeError, match=r"site 'hungarian'.*NaN or infinite.*linear\.weight"):
        _receive_and_validate(store, key)


def test_infinite_update_rejected(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    state = _reference()
    state["linear.bias"] = torch.tensor([float("inf")])
    with pytest.raises(ExchangeError, match=r"site 'hungarian'.*linear\.bias"):
        _receive_and_validate(store, _send(store, state))


def test_wrong_shape_update_rejected_naming_site(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    state = _reference()
    state["linear.weight"] = torch.zeros(1, 4)
    with pytest.raises(ExchangeError, match=r"site 'hungarian'.*shape \[1, 4\].*\[1, 3\].*linear\.weight"):
        _receive_and_validate(store, _send(store, state))


def test_wrong_dtype_update_rejected(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    state = _reference()
    state["linear.weight"] = torch.zeros(1, 3, dtype=torch.float64)
    with pytest.raises(ExchangeError, match=r"site 'hungarian'.*dtype torch.float64"):
        _receive_and_validate(store, _send(store, state))


def test_wrong_round_update_rejected_naming_site(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    key = _send(store, _reference(), round_number=1)
    with pytest.raises(ExchangeError, match=r"site 'hungarian'.*round 1, expected round 2"):
        _receive_and_validate(store, key, round_number=2)


def test_missing_and_extra_tensors_rejected(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    state = _reference()
    del state["linear.bias"]
    with pytest.raises(ExchangeError, match=r"missing a tensor.*linear\.bias"):
        _receive_and_validate(store, _send(store, state))
    state = {**_reference(), "smuggled": torch.zeros(1)}
    with pytest.raises(ExchangeError, match=r"tensor the model does not have.*smuggled"):
        _receive_and_validate(store, _send(store, state, site="va"), site="va")


def test_update_from_other_site_or_federation_rejected(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    with pytest.raises(ExchangeError, match="manifest names site 'va'"):
        _receive_and_validate(store, _send(store, _reference(), site="va"), site="hungarian")
    with pytest.raises(ExchangeError, match="federation 'other'"):
        _receive_and_validate(store, _send(store, _reference(), federation="other"))


def test_tampered_payload_rejected_by_sha256(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    key = _send(store, _reference())
    payload = tmp_path / key.replace(".json", ".safetensors")
    data = bytearray(payload.read_bytes())
    data[-1] ^= 0xFF
    payload.write_bytes(bytes(data))
    with pytest.raises(ExchangeError, match="sha256"):
        get_state(store, key, site_id="hungarian")


def test_pickle_payload_rejected(tmp_path: Path) -> None:
    """A pickle renamed to .safetensors with a matching manifest is never unpickled."""
    store = LocalFolderStore(tmp_path)
    key = _send(store, _reference())
    payload = tmp_path / key.replace(".json", ".safetensors")
    evil = pickle.dumps({"linear.weight": [[0.0, 0.0, 0.0]]})
    payload.write_bytes(evil)
    manifest_path = tmp_path / key
    manifest = json.loads(manifest_path.read_text())
    import hashlib

    manifest.update(payload_bytes=len(evil), payload_sha256=hashlib.sha256(evil).hexdigest())
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ExchangeError, match="not valid safetensors"):
        get_state(store, key, site_id="hungarian")


def test_store_rejects_keys_outside_root(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path / "store")
    with pytest.raises(ValueError, match="relative path"):
        store.put("../escape.json", b"{}")
    with pytest.raises(ValueError, match="relative path"):
        store.get("/etc/passwd")


def test_exchanged_files_contain_no_pickle(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    _send(store, {k: v + 0.5 for k, v in _reference().items()})
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 2
    for path in files:
        assert_no_pickle(path)
