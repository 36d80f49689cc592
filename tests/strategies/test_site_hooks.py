"""Site-side strategy hooks: FedProx's proximal term, SCAFFOLD's correction and fine-tuning.

Each test runs medfed's `train_local` on a small in-memory dataset and checks
it against the same steps written out in numpy for logistic regression.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from medfed.models.tabular import LogisticRegression
from medfed.pipelines.strategies import Scaffold, SiteUpdate
from medfed.sites.control_variates import gradient_correction, next_control_variate
from medfed.sites.training import LocalTrainingConfig, fine_tune_and_evaluate, train_local

NUM_FEATURES = 3


class FixedBatches:
    """A SiteDataset stand-in whose training batches come in a fixed order, cycling."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
        self.x, self.y, self.batch_size = x.astype(np.float32), y.astype(np.float32), batch_size
        self.num_train = self.num_test = len(y)

    def batches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]) for i in range(0, len(self.y), self.batch_size)]

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            for x, y in self.batches():
                yield torch.from_numpy(x), torch.from_numpy(y)

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield torch.from_numpy(self.x), torch.from_numpy(self.y)


def make_data(seed: int, rows: int = 8) -> FixedBatches:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, NUM_FEATURES))
    y = (x @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.5, size=rows) > 0).astype(np.float64)
    return FixedBatches(x, y, batch_size=4)


def make_model(seed: int = 0) -> LogisticRegression:
    torch.manual_seed(seed)
    return LogisticRegression(NUM_FEATURES)


def params_of(model: LogisticRegression) -> tuple[np.ndarray, float]:
    return model.linear.weight.detach().numpy().astype(np.float64)[0].copy(), float(model.linear.bias.detach())


def numpy_sgd(w, b, data: FixedBatches, steps: int, lr: float, mu: float = 0.0, correction=None):
    """SGD on mean BCE-with-logits, plus mu/2 ||theta - theta0||^2 and a constant gradient correction."""
    w0, b0 = w.copy(), b
    batches = data.batches()
    for step in range(steps):
        x, y = batches[step % len(batches)]
        p = 1 / (1 + np.exp(-(x @ w + b)))
        grad_w = x.T @ (p - y) / len(y) + mu * (w - w0)
        grad_b = float(np.mean(p - y)) + mu * (b - b0)
        if correction is not None:
            grad_w = grad_w + correction[0]
            grad_b = grad_b + correction[1]
        w, b = w - lr * grad_w, b - lr * grad_b
    return w, b


def test_proximal_term_matches_numpy():
    data = make_data(seed=1)
    model = make_model()
    w, b = params_of(model)
    config = LocalTrainingConfig(steps=5, lr=0.3, proximal_mu=0.7)
    train_local(model, data, config, torch.Generator())
    expected_w, expected_b = numpy_sgd(w, b, data, steps=5, lr=0.3, mu=0.7)
    np.testing.assert_allclose(params_of(model)[0], expected_w, rtol=1e-4, atol=1e-5)
    assert params_of(model)[1] == pytest.approx(expected_b, abs=1e-5)


def test_gradient_correction_matches_numpy():
    data = make_data(seed=2)
    model = make_model()
    w, b = params_of(model)
    server = {"linear.weight": torch.tensor([[0.1, -0.2, 0.3]]), "linear.bias": torch.tensor([0.05])}
    site = {"linear.weight": torch.tensor([[0.3, 0.1, -0.1]])}  # bias missing: reads as zero
    correction = gradient_correction(model, server, site)
    train_local(model, data, LocalTrainingConfig(steps=4, lr=0.2, control_variates=True), torch.Generator(), correction)
    expected_w, expected_b = numpy_sgd(w, b, data, steps=4, lr=0.2, correction=(np.array([-0.2, -0.3, 0.4]), 0.05))
    np.testing.assert_allclose(params_of(model)[0], expected_w, rtol=1e-4, atol=1e-5)
    assert params_of(model)[1] == pytest.approx(expected_b, abs=1e-5)


def test_scaffold_two_rounds_match_numpy():
    """Two sites and the centre for two rounds, against Algorithm 1 (option II) written out in numpy."""
    sites = {"a": make_data(seed=3, rows=8), "b": make_data(seed=4, rows=12)}
    steps, lr = 3, 0.5
    strategy = Scaffold()
    model = make_model(seed=5)
    global_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    site_cv: dict[str, dict[str, torch.Tensor]] = {site: {} for site in sites}

    x_w, x_b = params_of(model)
    c_w, c_b = np.zeros(NUM_FEATURES), 0.0
    ci = {site: (np.zeros(NUM_FEATURES), 0.0) for site in sites}
    weights = {site: data.num_train / sum(d.num_train for d in sites.values()) for site, data in sites.items()}

    for _round in range(2):
        server_cv = strategy.server_payloads()["control_variate"]
        updates = []
        for site, data in sites.items():
            local = make_model()
            local.load_state_dict(global_state)
            start = {name: p.detach().clone() for name, p in local.named_parameters()}
            correction = gradient_correction(local, server_cv, site_cv[site])
            result = train_local(local, data, LocalTrainingConfig(steps=steps, lr=lr, control_variates=True),
                                 torch.Generator(), correction)
            end = {name: p.detach().clone() for name, p in local.named_parameters()}
            site_cv[site], change = next_control_variate(site_cv[site], server_cv, start, end, steps=result.steps,
                                                         learning_rate=lr)
            updates.append(SiteUpdate(site, data.num_train, dict(local.state_dict()), control_variate_delta=change))
        global_state = strategy.aggregate(global_state, updates)

        # The same round in numpy.
        new_models, changes = {}, {}
        for site, data in sites.items():
            ciw, cib = ci[site]
            yw, yb = numpy_sgd(x_w, x_b, data, steps, lr, correction=(c_w - ciw, c_b - cib))
            new_ci = (ciw - c_w + (x_w - yw) / (steps * lr), cib - c_b + (x_b - yb) / (steps * lr))
            changes[site] = (new_ci[0] - ciw, new_ci[1] - cib)
            ci[site] = new_ci
            new_models[site] = (yw, yb)
        x_w = sum(weights[s] * new_models[s][0] for s in sites)
        x_b = sum(weights[s] * new_models[s][1] for s in sites)
        c_w = c_w + sum(weights[s] * changes[s][0] for s in sites)
        c_b = c_b + sum(weights[s] * changes[s][1] for s in sites)

        np.testing.assert_allclose(global_state["linear.weight"].numpy()[0], x_w, rtol=1e-4, atol=1e-5)
        assert float(global_state["linear.bias"]) == pytest.approx(x_b, abs=1e-5)
        server_after = strategy.server_payloads()["control_variate"]
        np.testing.assert_allclose(server_after["linear.weight"].numpy()[0], c_w, rtol=1e-4, atol=1e-4)
        assert float(server_after["linear.bias"]) == pytest.approx(c_b, abs=1e-4)


def test_control_variate_needs_a_step():
    with pytest.raises(ValueError, match="steps > 0"):
        next_control_variate({}, {}, {}, {}, steps=0, learning_rate=0.1)


def test_fine_tuning_reports_before_and_after():
    data = make_data(seed=6, rows=16)
    model = make_model(seed=7)
    w, b = params_of(model)
    config = LocalTrainingConfig(lr=0.01, fine_tune_steps=6, fine_tune_learning_rate=0.4, proximal_mu=1.0)
    metrics = fine_tune_and_evaluate(model, data, config, torch.Generator())

    def numpy_accuracy(weight, bias):
        return float(np.mean(((data.x @ weight + bias) > 0) == data.y))

    # Fine-tuning uses its own learning rate and drops the proximal term.
    tuned_w, tuned_b = numpy_sgd(w, b, data, steps=6, lr=0.4)
    assert metrics["before_fine_tuning/accuracy"] == pytest.approx(numpy_accuracy(w, b))
    assert metrics["after_fine_tuning/accuracy"] == pytest.approx(numpy_accuracy(tuned_w, tuned_b))
    np.testing.assert_allclose(params_of(model)[0], tuned_w, rtol=1e-4, atol=1e-5)


def test_control_variates_reject_adam():
    with pytest.raises(ValueError, match="plain SGD"):
        LocalTrainingConfig(control_variates=True, optimizer="adam")
