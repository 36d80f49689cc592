"""PNG plots for MLflow: accuracy of the global model per round, overall and per site."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be set first)


def accuracy_plot(history: list[dict[str, float]], site_ids: list[str], metric: str = "accuracy") -> bytes:
    """Plot `metric` of the global model against the round number; return PNG bytes.

    `history[i]` holds round i+1's metrics with keys `<metric>_mean` and
    `site/<site>/<metric>`.
    """
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    rounds = list(range(1, len(history) + 1))
    for site_id in site_ids:
        key = f"site/{site_id}/{metric}"
        points = [(r, h[key]) for r, h in zip(rounds, history, strict=True) if key in h]
        if points:
            axes.plot(*zip(*points, strict=True), marker=".", linewidth=1, label=site_id)
    overall = [(r, h[f"{metric}_mean"]) for r, h in zip(rounds, history, strict=True) if f"{metric}_mean" in h]
    if overall:
        axes.plot(*zip(*overall, strict=True), color="black", linewidth=2.5, label="mean of sites")
    axes.set_xlabel("round")
    axes.set_ylabel(f"test {metric}")
    axes.set_title(f"Global model {metric} per round")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
