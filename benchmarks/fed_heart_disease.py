"""Reproduce FLamby's Fed-Heart-Disease benchmark with medfed's strategies.

Usage (from the repository root):

    .venv/bin/python benchmarks/fed_heart_disease.py [--rows pooled,local,...] [--seeds 42,43]

The data protocol and the training settings are FLamby's (see
`flamby_heart.py`). The table lists, per row, each site's test accuracy and
the mean over the four sites, as mean ± std over the seeds, beside the
published mean-of-four accuracy. The JSON result goes to
`benchmarks/results/fed_heart_disease.json`, and every (row, seed) run is
logged to MLflow under the experiment `fed_heart_disease`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flamby_heart import (  # noqa: E402
    BATCH_SIZE,
    POOLED_EPOCHS,
    POOLED_LR,
    SEEDS,
    SITE_LABELS,
    SITES,
    FlambyLogisticRegression,
    HeartData,
    ShuffledBatches,
    accuracy,
    load_heart_data,
)
from federated_rows import FEDERATED_ROWS, FederatedRow, run_federated  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data" / "heart_disease"
RESULTS_PATH = REPO_ROOT / "benchmarks" / "results" / "fed_heart_disease.json"
EXPERIMENT = "fed_heart_disease"

# Published mean-of-four accuracies of FLamby's Fed-Heart-Disease benchmark
# (du Terrail et al., NeurIPS 2022 Datasets and Benchmarks), over 5 seeds.
PUBLISHED = {
    "pooled": 0.7353,
    "local_cleveland": 0.7221,
    "fedavg": 0.6850,
    "fedprox": 0.6850,
    "scaffold": 0.6840,
    "fedadam": 0.7255,
    "fedyogi": 0.7314,
    "fedadagrad": 0.7314,
    "cyclic": 0.7180,
}
# A reproduced row passes when it lies within this distance of the published value.
TOLERANCE = 0.02


@dataclass
class RowResult:
    """Per-seed accuracies of one benchmark row."""

    row: str
    settings: dict[str, object]
    per_seed: dict[int, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def site_values(self, site: str) -> np.ndarray:
        return np.array([accuracies[site] for accuracies in self.per_seed.values()])

    def mean_of_four(self) -> np.ndarray:
        return np.array([np.mean([acc[s] for s in SITES]) for acc in self.per_seed.values()])


def train_centralised(data_x: torch.Tensor, data_y: torch.Tensor, seed: int) -> torch.nn.Module:
    """Train FLamby's logistic regression with Adam for 50 epochs, as its pooled and local baselines do."""
    torch.manual_seed(seed)
    model = FlambyLogisticRegression()
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=POOLED_LR)
    loss_fn = torch.nn.BCELoss()
    batches = ShuffledBatches(data_x, data_y, BATCH_SIZE)
    model.train()
    for x, y in batches.passes(POOLED_EPOCHS):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    return model


def evaluate_sites(model: torch.nn.Module, data: HeartData) -> dict[str, float]:
    return {site: accuracy(model, data.sites[site].x_test, data.sites[site].y_test) for site in SITES}


def run_pooled(data: HeartData, seed: int) -> dict[str, float]:
    return evaluate_sites(train_centralised(data.pooled_x_train, data.pooled_y_train, seed), data)


def make_local_runner(site: str) -> Callable[[HeartData, int], dict[str, float]]:
    def run_local(data: HeartData, seed: int) -> dict[str, float]:
        site_data = data.sites[site]
        return evaluate_sites(train_centralised(site_data.x_train, site_data.y_train, seed), data)

    return run_local


CENTRALISED_SETTINGS = {"optimizer": "Adam", "learning_rate": POOLED_LR, "epochs": POOLED_EPOCHS, "batch_size": BATCH_SIZE}


def build_rows() -> dict[str, tuple[dict[str, object], Callable[[HeartData, int], dict[str, float]]]]:
    """Return each row's settings and its runner, in table order."""
    rows: dict[str, tuple[dict[str, object], Callable[[HeartData, int], dict[str, float]]]] = {
        "pooled": (CENTRALISED_SETTINGS, run_pooled),
    }
    for site in SITES:
        rows[f"local_{site}"] = ({**CENTRALISED_SETTINGS, "site": site}, make_local_runner(site))
    for name, row in FEDERATED_ROWS.items():
        rows[name] = (row.describe(), make_federated_runner(row))
    return rows


def make_federated_runner(row: FederatedRow) -> Callable[[HeartData, int], dict[str, float]]:
    def run(data: HeartData, seed: int) -> dict[str, float]:
        return run_federated(row, data, seed)

    return run


def format_value(values: np.ndarray) -> str:
    return f"{values.mean():.4f} ± {values.std():.4f}"


def format_table(results: list[RowResult]) -> str:
    """Render the results as a Markdown table."""
    header = ["row", *(SITE_LABELS[s] for s in SITES), "mean of 4", "published", "within 0.02"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        mean = result.mean_of_four()
        published = PUBLISHED.get(result.row)
        if published is None:
            published_text, verdict = "", ""
        else:
            published_text = f"{published:.4f}"
            verdict = "yes" if abs(mean.mean() - published) <= TOLERANCE else "**no**"
        cells = [result.row, *(format_value(result.site_values(s)) for s in SITES), format_value(mean), published_text, verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class MlflowLogger:
    """Log each (row, seed) run under one parent run per benchmark invocation."""

    def __init__(self, tracking_dir: Path) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        tracking_dir.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{(tracking_dir / 'mlflow.db').resolve()}"
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            # MLflow 3.17 writes artifacts to ./mlruns of the working directory
            # unless the experiment names a location.
            artifacts = (tracking_dir / "artifacts").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=artifacts)
        else:
            self.experiment_id = experiment.experiment_id
        self.uri = uri
        self.parent = self.client.create_run(self.experiment_id, run_name=f"benchmark {time.strftime('%Y-%m-%d %H:%M:%S')}")

    def log_run(self, row: str, settings: dict[str, object], seed: int, accuracies: dict[str, float]) -> None:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{row} seed {seed}",
            tags={"mlflow.parentRunId": self.parent.info.run_id, "row": row},
        )
        run_id = run.info.run_id
        for key, value in {**settings, "row": row, "seed": seed}.items():
            self.client.log_param(run_id, key, value)
        for site, value in accuracies.items():
            self.client.log_metric(run_id, f"site/{site}/accuracy", value)
        self.client.log_metric(run_id, "mean_of_four_accuracy", float(np.mean(list(accuracies.values()))))
        self.client.set_terminated(run_id)

    def finish(self, results: list[RowResult]) -> None:
        run_id = self.parent.info.run_id
        for result in results:
            mean = result.mean_of_four()
            self.client.log_metric(run_id, f"{result.row}/mean_of_four_accuracy", float(mean.mean()))
            self.client.log_metric(run_id, f"{result.row}/mean_of_four_accuracy_std", float(mean.std()))
        self.client.set_terminated(run_id)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="all", help="comma-separated row names, or 'all' (default)")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default 42-46)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON result file")
    parser.add_argument(
        "--mlflow-dir",
        type=Path,
        default=REPO_ROOT / ".medfed" / "benchmarks" / "mlflow",
        help="folder for MLflow's SQLite store and artifacts",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="skip MLflow logging")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The model has 14 parameters: more threads only add overhead.
    torch.set_num_threads(1)
    rows = build_rows()
    selected = list(rows) if args.rows == "all" else args.rows.split(",")
    unknown = [name for name in selected if name not in rows]
    if unknown:
        raise SystemExit(f"unknown row(s) {unknown}; choose from: {', '.join(rows)}")
    seeds = [int(seed) for seed in args.seeds.split(",")]

    data = load_heart_data(DATA_DIR)
    tracker = None if args.no_mlflow else MlflowLogger(args.mlflow_dir)
    started = time.perf_counter()
    results: list[RowResult] = []
    for name in selected:
        settings, runner = rows[name]
        result = RowResult(row=name, settings=dict(settings))
        row_started = time.perf_counter()
        for seed in seeds:
            result.per_seed[seed] = runner(data, seed)
            if tracker is not None:
                tracker.log_run(name, settings, seed, result.per_seed[seed])
        result.seconds = time.perf_counter() - row_started
        results.append(result)
        print(f"{name}: mean of four {format_value(result.mean_of_four())} ({result.seconds:.1f} s)", flush=True)
    wall = time.perf_counter() - started
    if tracker is not None:
        tracker.finish(results)

    table = format_table(results)
    print()
    print(table)
    print(f"\nwall time {wall:.1f} s, seeds {seeds}")
    write_json(args.output, results, seeds, wall)
    return 0


def write_json(path: Path, results: list[RowResult], seeds: list[int], wall_seconds: float) -> None:
    payload = {
        "benchmark": EXPERIMENT,
        "seeds": seeds,
        "wall_seconds": round(wall_seconds, 1),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
        "tolerance": TOLERANCE,
        "rows": [
            {
                "row": result.row,
                "settings": result.settings,
                "published_mean_of_four": PUBLISHED.get(result.row),
                "mean_of_four": {"mean": float(result.mean_of_four().mean()), "std": float(result.mean_of_four().std())},
                "per_site": {
                    site: {"mean": float(result.site_values(site).mean()), "std": float(result.site_values(site).std())}
                    for site in SITES
                },
                "per_seed": {str(seed): accs for seed, accs in result.per_seed.items()},
                "seconds": round(result.seconds, 1),
            }
            for result in results
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
