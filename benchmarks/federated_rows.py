"""Federated rows of the Fed-Heart-Disease benchmark, driven with medfed's own parts.

Each round, every site the strategy selects trains a copy of the global
model with medfed's `train_local`. FedProx's proximal term and SCAFFOLD's
gradient correction and control-variate update come from `medfed.sites`.
The strategy's own `aggregate` then turns the updates into the next global
model. The
central Prefect flow is not used here, because it applies medfed's federated
preprocessing, while this benchmark must use FLamby's per-site z-scoring.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from flamby_heart import LOCAL_STEPS, ROUNDS, SITES, HeartData, ShuffledBatches, SiteData
from medfed.models.tabular import LogisticRegression
from medfed.pipelines.strategies import SiteUpdate, Strategy, build_strategy
from medfed.sites.control_variates import gradient_correction, next_control_variate
from medfed.sites.training import LocalTrainingConfig, evaluate, train_local

NUM_FEATURES = 13


class FlambySiteDataset:
    """One site's FLamby tensors behind medfed's `SiteDataset` protocol.

    FLamby keeps one data iterator per site for the whole federation, so a
    round continues the pass where the previous round stopped. This adapter
    does the same: `train_batches` returns the same stream every round and
    ignores the per-round generator the site job would pass.
    """

    def __init__(self, site: SiteData) -> None:
        self.site = site
        self.num_train = len(site.y_train)
        self.num_test = len(site.y_test)
        self._batches = ShuffledBatches(site.x_train, site.y_train.reshape(-1))
        self._stream = self._endless()

    def _endless(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self._batches.next_batch()

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._stream

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield self.site.x_test, self.site.y_test.reshape(-1)


@dataclass(frozen=True)
class FederatedRow:
    """A strategy block as in an experiment YAML, and the sites' SGD learning rate."""

    strategy: dict[str, Any]
    learning_rate: float
    # FLamby's Cyclic keeps one model per site and never passes weights on,
    # then scores the first site's model; True reproduces that behaviour.
    flamby_cyclic: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            **{f"strategy.{key}": value for key, value in self.strategy.items()},
            "site_optimizer": "sgd",
            "site_learning_rate": self.learning_rate,
            "local_steps": LOCAL_STEPS,
            "rounds": ROUNDS,
            "batch_size": 4,
            **({"flamby_cyclic": True} if self.flamby_cyclic else {}),
        }


def initial_model(seed: int) -> LogisticRegression:
    """FLamby seeds torch, then builds the model: the same draw gives the same initial weights."""
    torch.manual_seed(seed)
    return LogisticRegression(NUM_FEATURES)


def run_federated(row: FederatedRow, data: HeartData, seed: int) -> dict[str, float]:
    """Run one federation for `seed` and return each site's test accuracy of the final global model."""
    global_model = initial_model(seed)
    options = dict(row.strategy)
    if options["name"] == "cyclic":
        # FLamby draws the site order from numpy.random.default_rng(seed).
        options["seed"] = seed
    strategy = build_strategy(options)
    hints = strategy.site_hints()
    config = LocalTrainingConfig(
        steps=LOCAL_STEPS, batch_size=4, optimizer="sgd", lr=row.learning_rate,
        proximal_mu=hints.proximal_mu, control_variates=hints.control_variates,
    )
    torch.manual_seed(seed)
    datasets = {site: FlambySiteDataset(data.sites[site]) for site in SITES}
    if row.flamby_cyclic:
        return _run_flamby_cyclic(strategy, global_model, datasets, config)

    global_state = {name: tensor.detach().clone() for name, tensor in global_model.state_dict().items()}
    site_control_variates: dict[str, dict[str, torch.Tensor]] = {site: {} for site in SITES}
    unused_generator = torch.Generator()
    for round_number in range(1, ROUNDS + 1):
        server_control_variate = strategy.server_payloads().get("control_variate", {})
        updates = []
        for site in strategy.select_sites(round_number, list(SITES)):
            model = LogisticRegression(NUM_FEATURES)
            model.load_state_dict(global_state)
            correction = None
            if hints.control_variates:
                start = {name: p.detach().clone() for name, p in model.named_parameters()}
                correction = gradient_correction(model, server_control_variate, site_control_variates[site])
            result = train_local(model, datasets[site], config, unused_generator, correction)
            change = None
            if hints.control_variates and result.steps > 0:
                end = {name: p.detach().clone() for name, p in model.named_parameters()}
                site_control_variates[site], change = next_control_variate(
                    site_control_variates[site], server_control_variate, start, end,
                    steps=result.steps, learning_rate=config.lr,
                )
            state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
            updates.append(SiteUpdate(site, result.num_examples, state, control_variate_delta=change))
        global_state = strategy.aggregate(global_state, updates)

    global_model.load_state_dict(global_state)
    return {site: evaluate(global_model, datasets[site])["accuracy"] for site in SITES}


def _run_flamby_cyclic(
    strategy: Strategy,
    initial: LogisticRegression,
    datasets: dict[str, FlambySiteDataset],
    config: LocalTrainingConfig,
) -> dict[str, float]:
    """Reproduce FLamby's Cyclic as coded: each site trains only its own copy, and site 0's copy is scored."""
    models = {site: LogisticRegression(NUM_FEATURES) for site in SITES}
    for model in models.values():
        model.load_state_dict(initial.state_dict())
    unused_generator = torch.Generator()
    for round_number in range(1, ROUNDS + 1):
        for site in strategy.select_sites(round_number, list(SITES)):
            train_local(models[site], datasets[site], config, unused_generator)
    scored = models[SITES[0]]
    return {site: evaluate(scored, datasets[site])["accuracy"] for site in SITES}


# FLamby's tuned settings for this dataset (flamby/config_heart_disease.json).
FEDERATED_ROWS: dict[str, FederatedRow] = {
    "fedavg": FederatedRow({"name": "fedavg"}, learning_rate=0.001),
    "fedprox": FederatedRow({"name": "fedprox", "proximal_mu": 0.01}, learning_rate=0.001),
    "scaffold": FederatedRow({"name": "scaffold", "server_learning_rate": 1.0}, learning_rate=0.001),
    "fedadam": FederatedRow(
        {"name": "fedadam", "server_learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "tau": 1e-8},
        learning_rate=0.01,
    ),
    "fedyogi": FederatedRow(
        {"name": "fedyogi", "server_learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "tau": 1e-8},
        learning_rate=0.003162,
    ),
    "fedadagrad": FederatedRow(
        {"name": "fedadagrad", "server_learning_rate": 0.316228, "beta1": 0.9, "beta2": 0.999, "tau": 1e-8},
        learning_rate=0.003162,
    ),
    "cyclic": FederatedRow({"name": "cyclic", "shuffle_each_cycle": True}, learning_rate=0.01),
    "cyclic_flamby_as_coded": FederatedRow(
        {"name": "cyclic", "shuffle_each_cycle": True}, learning_rate=0.01, flamby_cyclic=True
    ),
}
