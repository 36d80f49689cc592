"""Search for a demo default that matches pooled training on FLamby's heart-disease test rows.

Usage (from the repository root):

    .venv/bin/python benchmarks/heart_default.py [--candidates fedavg_lr0.01,...] [--seeds 42,43]

Every candidate uses medfed's own preprocessing instead of FLamby's: the
site's contract validation (policy "drop"), federated means and standard
deviations merged from per-site sums, mean imputation of missing values, and
one-hot `cp` and `restecg` (15 inputs). The test rows are exactly those of
FLamby's protocol (`flamby_heart.py`). Every other row of a site's file,
including the rows FLamby drops for missing values, is training data.
Training follows the site job: per-round batch order from `site_seed`, the
strategy's hints, and its `aggregate` step. The score is the mean over the
four sites of test accuracy at 0.5, reported as mean ± std over seeds 42-46
beside the pooled row of the reproduction benchmark (0.7348).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flamby_heart import SEEDS, SITES, load_heart_data  # noqa: E402
from medfed.data_contracts.tabular import Policy, load_contract, validate_file  # noqa: E402
from medfed.models import build_model  # noqa: E402
from medfed.pipelines.strategies import SiteUpdate, build_strategy  # noqa: E402
from medfed.pipelines.strategy_support import site_training_config  # noqa: E402
from medfed.sites.config import load_site_config  # noqa: E402
from medfed.sites.control_variates import gradient_correction, next_control_variate  # noqa: E402
from medfed.sites.datasets import DataSpec, open_dataset  # noqa: E402
from medfed.sites.job import site_seed  # noqa: E402
from medfed.sites.preprocessing import (  # noqa: E402
    PreprocessingPlan,
    TabularFeatures,
    merge_statistics,
    site_statistics,
    transform,
)
from medfed.sites.training import LocalTrainingConfig, evaluate, train_local  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data" / "heart_disease"
RESULTS_PATH = REPO_ROOT / "benchmarks" / "results" / "heart_default.json"
EXAMPLE_SITES = REPO_ROOT / "examples" / "heart_disease" / "sites"
POOLED_REFERENCE = 0.7348  # pooled row of benchmarks/fed_heart_disease.py, seeds 42-46
TARGET = 0.735
MIN_COUNT = 10  # the example sites' min_count
FEATURES = TabularFeatures(
    numeric=["age", "trestbps", "chol", "thalach", "oldpeak"],
    binary=["sex", "fbs", "exang"],
    categorical={"cp": [1, 2, 3, 4], "restecg": [0, 1, 2]},
)


class BenchmarkRowsDataset:
    """A site's validated table split on FLamby's test rows, behind medfed's `SiteDataset` protocol."""

    def __init__(self, site: str, frame: pd.DataFrame, labels: pd.Series, test_lines: np.ndarray) -> None:
        self.site = site
        is_test = frame.index.isin(test_lines)
        self.train_frame, self.test_frame = frame[~is_test], frame[is_test]
        self.train_labels = torch.tensor(labels[~is_test].to_numpy(), dtype=torch.float32)
        self.test_labels = torch.tensor(labels[is_test].to_numpy(), dtype=torch.float32)
        self.num_train, self.num_test = len(self.train_frame), len(self.test_frame)
        self._train_x = self._test_x = torch.empty(0)

    def statistics(self, min_count: int):
        return site_statistics(self.train_frame, FEATURES, site_id=self.site, min_count=min_count)

    def prepare(self, plan: PreprocessingPlan) -> None:
        self._train_x, self._test_x = transform(self.train_frame, plan), transform(self.test_frame, plan)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            order = torch.randperm(self.num_train, generator=generator)
            for start in range(0, self.num_train, batch_size):
                index = order[start : start + batch_size]
                yield self._train_x[index], self.train_labels[index]

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield self._test_x, self.test_labels

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._train_x, self.train_labels


def load_demo_split_sites() -> dict[str, Any]:
    """Open the example sites through the site job's own dataset code, with the demo's 66/34 split.

    On this split `run_candidate` computes exactly what the central flow
    computes, so its accuracies can be compared with
    `benchmarks/results/demo_seeds.json`.
    """
    spec = DataSpec(dataset="heart_disease", features=FEATURES, test_fraction=0.34, split_seed=43)
    sites = {
        site: open_dataset(load_site_config(EXAMPLE_SITES / f"{site}.yaml"), spec) for site in SITES
    }
    plan = merge_statistics([data.statistics(MIN_COUNT) for data in sites.values()], FEATURES)
    for data in sites.values():
        data.prepare(plan)
    return sites


def load_sites() -> dict[str, BenchmarkRowsDataset]:
    """Validate each site's file with medfed's contract and split it on FLamby's test rows."""
    contract = load_contract("uci_heart_disease")
    flamby = load_heart_data(DATA_DIR)
    sites = {}
    for site in SITES:
        table = validate_file(DATA_DIR / site / f"processed.{site}.data", contract, policy=Policy.DROP)
        labels = contract.label.positive(table.frame[contract.label.column]).astype(int)
        # The validated frame is indexed by line number (1-based); FLamby's rows are 0-based positions.
        test_lines = flamby.sites[site].test_file_rows + 1
        missing = set(test_lines) - set(table.frame.index)
        if missing:
            raise ValueError(f"{site}: {len(missing)} of FLamby's test rows failed medfed's contract")
        sites[site] = BenchmarkRowsDataset(site, table.frame, labels, test_lines)
    plan = merge_statistics([data.statistics(MIN_COUNT) for data in sites.values()], FEATURES)
    for data in sites.values():
        data.prepare(plan)
    return sites


@dataclass(frozen=True)
class Candidate:
    strategy: dict[str, Any]
    training: dict[str, Any]
    rounds: int = 15
    model: str = "logistic_regression"


def run_candidate(candidate: Candidate, sites: dict[str, Any], seed: int) -> dict[str, float]:
    """Run one federation the way the site job and the central flow do, and score the final model."""
    strategy = build_strategy(candidate.strategy)
    hints = strategy.site_hints()
    config = site_training_config(LocalTrainingConfig(**candidate.training), hints)
    torch.manual_seed(seed)
    global_model = build_model(candidate.model, in_features=FEATURES.num_inputs)
    global_state = {name: tensor.detach().clone() for name, tensor in global_model.state_dict().items()}
    control_variates: dict[str, dict[str, torch.Tensor]] = {site: {} for site in SITES}
    for round_number in range(1, candidate.rounds + 1):
        server_control_variate = strategy.server_payloads().get("control_variate", {})
        updates = []
        for site in strategy.select_sites(round_number, list(SITES)):
            model = build_model(candidate.model, in_features=FEATURES.num_inputs)
            model.load_state_dict(global_state)
            generator = torch.Generator().manual_seed(site_seed(seed, site, round_number))
            start = {name: p.detach().clone() for name, p in model.named_parameters()}
            correction = None
            if hints.control_variates:
                correction = gradient_correction(model, server_control_variate, control_variates[site])
            result = train_local(model, sites[site], config, generator, correction)
            change = None
            if hints.control_variates and result.steps > 0:
                end = {name: p.detach().clone() for name, p in model.named_parameters()}
                control_variates[site], change = next_control_variate(
                    control_variates[site], server_control_variate, start, end,
                    steps=result.steps, learning_rate=config.lr,
                )
            state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
            updates.append(SiteUpdate(site, result.num_examples, state, control_variate_delta=change))
        global_state = strategy.aggregate(global_state, updates)
    global_model.load_state_dict(global_state)
    return {site: evaluate(global_model, sites[site])["accuracy"] for site in SITES}


def run_pooled(sites: dict[str, Any], seed: int) -> dict[str, float]:
    """Train on every site's training rows together (Adam, lr 0.001, 50 epochs, batch 4), as FLamby's pooled row does."""
    x = torch.cat([data.train_tensors()[0] for data in sites.values()])
    y = torch.cat([data.train_tensors()[1] for data in sites.values()])
    torch.manual_seed(seed)
    model = build_model("logistic_regression", in_features=FEATURES.num_inputs)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(50):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), 4):
            index = order[start : start + 4]
            optimizer.zero_grad()
            loss_fn(model(x[index]), y[index]).backward()
            optimizer.step()
    return {site: evaluate(model, sites[site])["accuracy"] for site in SITES}


SGD_100 = {"steps": 100, "batch_size": 4, "optimizer": "sgd"}
# Pooled training on the same preprocessing, for comparison; not a federated candidate.
POOLED = "pooled_medfed_preprocessing"
CANDIDATES: dict[str, Candidate] = {
    "fedavg_lr0.01": Candidate({"name": "fedavg"}, {**SGD_100, "lr": 0.01}),
    "fedavg_lr0.001": Candidate({"name": "fedavg"}, {**SGD_100, "lr": 0.001}),
    "fedprox_lr0.01": Candidate({"name": "fedprox", "proximal_mu": 0.01}, {**SGD_100, "lr": 0.01}),
    "scaffold_lr0.01": Candidate({"name": "scaffold"}, {**SGD_100, "lr": 0.01}),
    "fedavgm_lr0.01": Candidate({"name": "fedavgm", "server_momentum": 0.5}, {**SGD_100, "lr": 0.01}),
    "fedyogi_flamby": Candidate(
        {"name": "fedyogi", "server_learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "tau": 1e-8},
        {**SGD_100, "lr": 0.003162},
    ),
    "fedadam_flamby": Candidate(
        {"name": "fedadam", "server_learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "tau": 1e-8},
        {**SGD_100, "lr": 0.01},
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", default="all", help="comma-separated candidate names, or 'all'")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON result file")
    parser.add_argument(
        "--split",
        choices=["flamby", "demo"],
        default="flamby",
        help="test rows: FLamby's (default), or the demo's own split, to compare with the central flow",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    names = [POOLED, *CANDIDATES] if args.candidates == "all" else args.candidates.split(",")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    sites = load_sites() if args.split == "flamby" else load_demo_split_sites()
    print(f"train/test rows per site: { {s: (d.num_train, d.num_test) for s, d in sites.items()} }")

    rows = []
    for name in names:
        started = time.perf_counter()
        if name == POOLED:
            per_seed = {seed: run_pooled(sites, seed) for seed in seeds}
        else:
            per_seed = {seed: run_candidate(CANDIDATES[name], sites, seed) for seed in seeds}
        means = np.array([np.mean(list(accuracies.values())) for accuracies in per_seed.values()])
        per_site = {s: float(np.mean([acc[s] for acc in per_seed.values()])) for s in SITES}
        rows.append({
            "candidate": name,
            **({} if name == POOLED else {
                "strategy": CANDIDATES[name].strategy,
                "training": CANDIDATES[name].training,
                "rounds": CANDIDATES[name].rounds,
            }),
            "mean_of_four": {"mean": float(means.mean()), "std": float(means.std())},
            "per_site_mean": per_site,
            "per_seed": {str(seed): acc for seed, acc in per_seed.items()},
        })
        verdict = "meets" if means.mean() >= TARGET else "below"
        print(f"{name}: {means.mean():.4f} ± {means.std():.4f} ({verdict} {TARGET}; "
              f"{' '.join(f'{s} {v:.3f}' for s, v in per_site.items())}; {time.perf_counter() - started:.1f} s)",
              flush=True)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"seeds": seeds, "pooled_reference": POOLED_REFERENCE, "target": TARGET,
                                       "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
