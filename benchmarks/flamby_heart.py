"""FLamby's Fed-Heart-Disease data protocol, rebuilt on the bundled UCI files.

This module copies the behaviour of FLamby's `FedHeartDisease` dataset
(owkin/FLamby, `flamby/datasets/fed_heart_disease/dataset.py`) and of its
benchmark settings (`flamby/datasets/fed_heart_disease/common.py`,
`flamby/config_heart_disease.json`), so that medfed's numbers can be compared
with the published ones. It is benchmark code, not medfed's own
preprocessing: medfed imputes missing values and normalises with federated
statistics, while this protocol drops rows and z-scores each site on its own.

The protocol, step by step:
1. Per site, replace `?` by missing, drop `slope`, `ca` and `thal`, then drop
   every row with a missing value.
2. Per site, split the row positions 66/34 with scikit-learn's
   `train_test_split(random_state=43, shuffle=True)`, stratified on the binary
   label when both classes have more than 2 rows.
3. On the four sites concatenated, one-hot encode `cp` and `restecg` with
   `drop_first=True`, which gives 13 inputs.
4. Z-score each site with the mean and the unbiased standard deviation of its
   own training rows (plus 1e-9 in the denominator). The pooled training set
   uses the statistics of all training rows instead, but every test set,
   including for the pooled model, keeps its own site's statistics, as in
   FLamby's benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

SITES = ("cleveland", "hungarian", "switzerland", "va")
SITE_LABELS = {
    "cleveland": "Cleveland",
    "hungarian": "Hungarian",
    "switzerland": "Switzerland",
    "va": "VA",
}
COLUMNS = (
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg",
    "thalach", "exang", "oldpeak", "slope", "ca", "thal", "num",
)  # fmt: skip
DROPPED_COLUMNS = ("slope", "ca", "thal")
ONE_HOT_COLUMNS = ("cp", "restecg")
TRAIN_FRACTION = 0.66
SPLIT_SEED = 43
NUM_FEATURES = 13
# FLamby divides by (std + 1e-9), so a feature that is constant in a site's
# training rows maps to 0 there.
STD_EPSILON = 1e-9

# Training settings of FLamby's benchmark for this dataset.
BATCH_SIZE = 4
POOLED_EPOCHS = 50
POOLED_LR = 1e-3  # Adam, for pooled and local training
LOCAL_STEPS = 100  # batches per site per round
# (486 // 4 sites // batch 4) * 50 epochs // 100 steps, FLamby's get_nb_max_rounds.
ROUNDS = 15
SEEDS = (42, 43, 44, 45, 46)


@dataclass(frozen=True)
class SiteData:
    """One site's rows under the protocol, as float32 tensors."""

    site: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    # Row positions in the site's file (0-based) of the test rows, so that
    # other preprocessing can be scored on exactly these rows.
    test_file_rows: np.ndarray
    train_file_rows: np.ndarray


@dataclass(frozen=True)
class HeartData:
    sites: dict[str, SiteData]
    pooled_x_train: torch.Tensor
    pooled_y_train: torch.Tensor


def read_site_file(path: Path) -> pd.DataFrame:
    """Read one `processed.<site>.data` file: no header, `?` for missing values."""
    frame = pd.read_csv(path, header=None, names=list(COLUMNS), na_values=["?"])
    return frame.apply(pd.to_numeric)


def split_positions(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split row positions 66/34 the way FLamby does, with seed 43."""
    count = len(labels)
    levels = np.unique(labels)
    stratify = None
    if len(levels) > 1 and all((labels == level).sum() > 2 for level in levels):
        stratify = labels
    train, test = train_test_split(
        np.arange(count),
        # FLamby passes 1.0 - 0.66; the same float keeps the same rounding of sizes.
        test_size=1.0 - TRAIN_FRACTION,
        train_size=TRAIN_FRACTION,
        random_state=SPLIT_SEED,
        shuffle=True,
        stratify=stratify,
    )
    return np.sort(train), np.sort(test)


def load_heart_data(data_dir: Path) -> HeartData:
    """Build every site's train and test tensors under FLamby's protocol."""
    site_frames: dict[str, pd.DataFrame] = {}
    file_rows: dict[str, np.ndarray] = {}
    test_masks: dict[str, np.ndarray] = {}
    for site in SITES:
        frame = read_site_file(data_dir / site / f"processed.{site}.data")
        frame = frame.drop(columns=list(DROPPED_COLUMNS)).dropna(axis=0)
        labels = (frame["num"] > 0).to_numpy(dtype=np.int64)
        _, test = split_positions(labels)
        is_test = np.zeros(len(frame), dtype=bool)
        is_test[test] = True
        site_frames[site] = frame
        file_rows[site] = frame.index.to_numpy()
        test_masks[site] = is_test

    # One-hot encoding runs on the concatenated sites, so every site gets the
    # same 13 columns even where a category is absent from it.
    combined = pd.concat([site_frames[site] for site in SITES], keys=list(SITES))
    features = pd.get_dummies(
        combined.drop(columns=["num"]), columns=list(ONE_HOT_COLUMNS), drop_first=True
    ).astype(np.float32)
    if features.shape[1] != NUM_FEATURES:
        raise ValueError(f"expected {NUM_FEATURES} inputs after one-hot encoding, got {features.shape[1]}")
    labels_all = (combined["num"] > 0).astype(np.float32)

    raw: dict[str, tuple[torch.Tensor, torch.Tensor, np.ndarray]] = {}
    for site in SITES:
        x = torch.tensor(features.loc[site].to_numpy(dtype=np.float32))
        y = torch.tensor(labels_all.loc[site].to_numpy(dtype=np.float32)).reshape(-1, 1)
        raw[site] = (x, y, test_masks[site])

    sites: dict[str, SiteData] = {}
    pooled_x, pooled_y = [], []
    for site in SITES:
        x, y, is_test = raw[site]
        train_mask = torch.from_numpy(~is_test)
        test_mask = torch.from_numpy(is_test)
        mean, std = x[train_mask].mean(dim=0), x[train_mask].std(dim=0)
        sites[site] = SiteData(
            site=site,
            x_train=(x[train_mask] - mean) / (std + STD_EPSILON),
            y_train=y[train_mask],
            x_test=(x[test_mask] - mean) / (std + STD_EPSILON),
            y_test=y[test_mask],
            test_file_rows=file_rows[site][is_test],
            train_file_rows=file_rows[site][~is_test],
        )
        pooled_x.append(x[train_mask])
        pooled_y.append(y[train_mask])

    pooled_raw = torch.cat(pooled_x)
    pooled_mean, pooled_std = pooled_raw.mean(dim=0), pooled_raw.std(dim=0)
    return HeartData(
        sites=sites,
        pooled_x_train=(pooled_raw - pooled_mean) / (pooled_std + STD_EPSILON),
        pooled_y_train=torch.cat(pooled_y),
    )


class FlambyLogisticRegression(torch.nn.Module):
    """FLamby's `Baseline`: one linear layer and a sigmoid, so it outputs probabilities."""

    def __init__(self, in_features: int = NUM_FEATURES) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(x))


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Return the share of rows whose probability > 0.5 matches the label."""
    model.eval()
    with torch.inference_mode():
        predicted = (model(x) > 0.5).to(y.dtype)
    return float((predicted == y).to(torch.float64).mean())


class ShuffledBatches:
    """Endless batches of one dataset, reshuffled at each pass, like FLamby's loader.

    FLamby wraps a `DataLoader(shuffle=True)` so that a site's iterator
    continues across rounds instead of restarting; the last batch of a pass
    may be short. The permutation comes from torch's global generator, as
    `RandomSampler` draws its seed from it.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = BATCH_SIZE) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0

    def __len__(self) -> int:
        return len(self.y)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cursor >= len(self._order):
            generator = torch.Generator()
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
            self._order = torch.randperm(len(self.y), generator=generator)
            self._cursor = 0
        index = self._order[self._cursor : self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return self.x[index], self.y[index]

    def passes(self, count: int):
        """Yield the batches of `count` full passes, starting each at a new permutation."""
        for _ in range(count):
            self._cursor = len(self._order)
            batches = -(-len(self.y) // self.batch_size)
            for _ in range(batches):
                yield self.next_batch()
