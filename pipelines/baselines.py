"""Research baselines beside a federation: pooled training and each site alone.

These runs read every site's data in one process, which a real federation
never does. They exist only to measure what federation costs or gains on
shared benchmark data, and each MLflow run says so in its tags.

Budget: a federation of R rounds with S local steps of batch B processes
n_sites * R * S batches. The pooled baseline gets the same number of steps
on the pooled training rows; each local baseline gets R * S steps, what that
site computed during the federation. Both are evaluated on every site's test
split after each round's worth of steps, with the metrics of the model's task
(accuracy and AUC for classification, Dice for segmentation).

Every data kind works here: a tabular table is encoded with a preprocessing
plan merged from the training sites' statistics, and DICOM images arrive
already preprocessed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from medfed import __version__
from medfed.models import build_model, get_spec
from medfed.models.registry import TaskKind
from medfed.pipelines.config import ExperimentConfig
from medfed.pipelines.federation import initial_state, resolve_model_kwargs
from medfed.pipelines.tracking import RunLogger, flatten
from medfed.sites.config import load_site_config
from medfed.sites.datasets import SiteDataset, open_dataset
from medfed.sites.job import site_seed
from medfed.sites.preprocessing import PreprocessingPlan, TabularFeatures, merge_statistics
from medfed.sites.training import LocalTrainingConfig, evaluate, train_local

logger = logging.getLogger(__name__)

BASELINE_NOTE = (
    "Research baseline: this run read every site's data on one machine, which a federation never does."
)


@dataclass
class _TensorData:
    """Training tensors in the shape `train_local` expects."""

    x: torch.Tensor
    y: torch.Tensor
    # Smaller trailing batches are skipped; 2 for images, as DicomDataset does, because a BatchNorm
    # layer whose input is reduced to 1 x 1 pixels cannot train on one example.
    min_batch_size: int = 1

    @property
    def num_train(self) -> int:
        return len(self.y)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            order = torch.randperm(len(self.y), generator=generator)
            for start in range(0, len(self.y), batch_size):
                index = order[start : start + batch_size]
                if len(index) < self.min_batch_size <= len(self.y):
                    continue
                yield self.x[index], self.y[index]


def load_site_datasets(config: ExperimentConfig) -> dict[str, SiteDataset]:
    """Open every site's dataset of the experiment, each validated against its contract."""
    datasets = {}
    for path in config.sites:
        site = load_site_config(path)
        dataset = open_dataset(site, config.data)
        if not hasattr(dataset, "train_tensors"):
            raise TypeError(
                f"data kind {config.data.kind!r} has no train_tensors() method, which the baselines need"
            )
        datasets[site.site_id] = dataset
    return datasets


def merged_plan(datasets: dict[str, SiteDataset], site_ids: list[str], features: TabularFeatures) -> PreprocessingPlan:
    """Merge the preprocessing statistics of `site_ids`; kinds without statistics (DICOM) add none."""
    statistics = [datasets[s].statistics(min_count=1) for s in site_ids]
    return merge_statistics([s for s in statistics if s is not None], features)


def evaluate_on_sites(
    model: torch.nn.Module,
    datasets: dict[str, SiteDataset],
    plan: PreprocessingPlan,
    task: TaskKind = "binary_classification",
) -> dict[str, float]:
    """Score `model` on every site's test split, encoded with `plan`, with the metrics of `task`."""
    metrics: dict[str, float] = {}
    for site_id, data in sorted(datasets.items()):
        data.prepare(plan)
        for name, value in evaluate(model, data, task).items():
            metrics[f"site/{site_id}/{name}"] = value
    for name in ("accuracy", "auc", "dice"):
        values = [v for k, v in metrics.items() if k.endswith(f"/{name}")]
        if values:
            metrics[f"{name}_mean"] = float(np.mean(values))
    return metrics


def _train_baseline(
    kind: str,
    config: ExperimentConfig,
    datasets: dict[str, SiteDataset],
    train_sites: list[str],
    plan: PreprocessingPlan,
    steps_per_round: int,
    tracker: RunLogger,
) -> dict[str, float]:
    model = build_model(config.model.name, **config.model.kwargs)
    model.load_state_dict(initial_state(config))
    task = get_spec(config.model.name).task
    inputs, targets = [], []
    for site_id in train_sites:
        datasets[site_id].prepare(plan)
        x, y = datasets[site_id].train_tensors()  # type: ignore[attr-defined]
        inputs.append(x)
        targets.append(y)
    data = _TensorData(torch.cat(inputs), torch.cat(targets),
                       min_batch_size=1 if get_spec(config.model.name).input_kind == "tabular" else 2)
    training: LocalTrainingConfig = config.training.model_copy(update={"steps": steps_per_round, "epochs": None})
    generator = torch.Generator().manual_seed(site_seed(config.seed, kind, 0))
    metrics: dict[str, float] = {}
    for round_number in range(1, config.rounds + 1):
        result = train_local(model, data, training, generator, task=task)
        metrics = evaluate_on_sites(model, datasets, plan, task)
        metrics["train_loss"] = result.mean_loss
        tracker.log_metrics(metrics, step=round_number)
    return metrics


def run_baselines(config: ExperimentConfig, federation_id: str, tracking_uri: str, artifact_root) -> dict[str, dict[str, float]]:
    """Train the pooled and per-site baselines; return the final metrics of each, by run label."""
    config = resolve_model_kwargs(config)
    datasets = load_site_datasets(config)
    site_ids = sorted(datasets)
    steps = config.training.num_steps(max(d.num_train for d in datasets.values()))
    features = config.data.features
    runs: list[tuple[str, list[str], int]] = []
    if config.baselines.pooled:
        runs.append(("pooled", site_ids, steps * len(site_ids)))
    if config.baselines.local:
        runs.extend((f"local:{s}", [s], config.training.num_steps(datasets[s].num_train)) for s in site_ids)

    results: dict[str, dict[str, float]] = {}
    for label, train_sites, steps_per_round in runs:
        plan = merged_plan(datasets, train_sites, features)
        kind = label.split(":")[0]
        tracker = RunLogger.start(
            tracking_uri, config.study, run_name=f"{federation_id}-{label.replace(':', '-')}",
            artifact_root=artifact_root,
            tags={"medfed.kind": kind, "medfed.comparison": federation_id, "medfed.version": __version__,
                  "medfed.baseline_note": BASELINE_NOTE, "medfed.trained_on": ",".join(train_sites)},
        )
        params = flatten(config.model_dump(mode="json", exclude={"sites"}))
        tracker.log_params({**params, "sites": json.dumps(site_ids), "baseline": label,
                            "baseline.steps_per_round": str(steps_per_round)})
        try:
            results[label] = _train_baseline(kind, config, datasets, train_sites, plan, steps_per_round, tracker)
        except Exception:
            tracker.end("FAILED")
            raise
        tracker.end("FINISHED")
        logger.info("baseline %s: %s", label, ", ".join(
            f"{name}={value:.4f}" for name, value in sorted(results[label].items()) if name.endswith("_mean")
        ))
    return results
