"""A site's training and test data, as the site job sees it.

`open_dataset` reads the file named in the site config, validates it against
its contract under the site's policy, splits it with a fixed seed and
returns a `SiteDataset`. Other data kinds (such as DICOM) provide the same
protocol and are listed in `DATASET_KINDS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Literal, Protocol

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.model_selection import train_test_split

from medfed.data_contracts.report import ContractReport
from medfed.data_contracts.tabular import load_contract, validate_file
from medfed.sites.config import SiteConfig
from medfed.sites.preprocessing import (
    PreprocessingPlan,
    SiteStatistics,
    TabularFeatures,
    site_statistics,
    transform,
)

logger = logging.getLogger(__name__)


class DataSpec(BaseModel):
    """Data request of the experiment to every site. It carries names, never paths."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="Dataset name as offered in each site config.")
    kind: Literal["tabular"] | str = "tabular"
    features: TabularFeatures = Field(default_factory=TabularFeatures)
    test_fraction: float = Field(default=0.34, gt=0, lt=1, description="Share of rows held out per site.")
    split_seed: int = Field(default=43, description="Seed of the per-site stratified train/test split.")
    options: dict[str, object] = Field(default_factory=dict, description="Options of non-tabular kinds.")


class SiteDataset(Protocol):
    """Train and test data of one site, after contract validation and the split."""

    report: ContractReport
    num_train: int
    num_test: int

    def statistics(self, min_count: int) -> SiteStatistics | None:
        """Return sums for federated preprocessing, or None when the kind needs none."""

    def prepare(self, plan: PreprocessingPlan | None) -> None:
        """Apply the federated preprocessing plan; called before training or evaluation."""

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield shuffled training batches forever, reshuffling after each pass."""

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the test split once, in a fixed order."""

    def sample_png(self) -> bytes | None:
        """Return a PNG of sample images that may leave the site, or None when none may."""


class TabularDataset:
    """A site's validated table, split once per (seed, fraction) and encoded by the plan."""

    def __init__(
        self, site_id: str, frame: pd.DataFrame, labels: pd.Series, report: ContractReport, spec: DataSpec
    ) -> None:
        self.site_id = site_id
        self.report = report
        self.spec = spec
        train_rows, test_rows = _stratified_split(frame.index, labels, spec.test_fraction, spec.split_seed)
        self.train_frame = frame.loc[train_rows]
        self.test_frame = frame.loc[test_rows]
        self.train_labels = torch.tensor(labels.loc[train_rows].to_numpy(), dtype=torch.float32)
        self.test_labels = torch.tensor(labels.loc[test_rows].to_numpy(), dtype=torch.float32)
        self.num_train = len(train_rows)
        self.num_test = len(test_rows)
        self._train_x: torch.Tensor | None = None
        self._test_x: torch.Tensor | None = None
        self._plan: PreprocessingPlan | None = None

    def statistics(self, min_count: int) -> SiteStatistics:
        return site_statistics(
            self.train_frame, self.spec.features, site_id=self.site_id, min_count=min_count
        )

    def prepare(self, plan: PreprocessingPlan | None) -> None:
        if plan is None:
            raise ValueError("tabular data needs a preprocessing plan; run the statistics phase first")
        if plan == self._plan:
            return
        self._train_x = transform(self.train_frame, plan)
        self._test_x = transform(self.test_frame, plan)
        self._plan = plan

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self._require(self._train_x), self.train_labels
        if len(y) == 0:
            return
        while True:
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), batch_size):
                index = order[start : start + batch_size]
                yield x[index], y[index]

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self._require(self._test_x), self.test_labels
        for start in range(0, len(y), batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]

    def sample_png(self) -> None:
        """Return None: a table has no images."""
        return None

    def test_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._require(self._test_x), self.test_labels

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._require(self._train_x), self.train_labels

    @staticmethod
    def _require(x: torch.Tensor | None) -> torch.Tensor:
        if x is None:
            raise RuntimeError("call prepare(plan) before reading batches")
        return x


def _stratified_split(
    index: pd.Index, labels: pd.Series, test_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    counts = labels.value_counts()
    stratify = labels if len(counts) > 1 and counts.min() >= 2 else None
    train, test = train_test_split(
        list(index), test_size=test_fraction, random_state=seed, stratify=stratify
    )
    return sorted(train), sorted(test)


def open_tabular(site: SiteConfig, spec: DataSpec) -> TabularDataset:
    """Validate the site's table against its contract and split it."""
    binding = site.dataset(spec.dataset)
    contract = load_contract(binding.contract)
    if contract.label is None:
        raise ValueError(f"contract {contract.name!r} defines no label, so it cannot train a classifier")
    missing = [c for c in spec.features.columns if c not in contract.column_names]
    if missing:
        raise ValueError(f"features {missing} are not columns of contract {contract.name!r}")
    table = validate_file(site.dataset_path(spec.dataset), contract, data_root=site.data_root, policy=site.policy)
    labels = contract.label.positive(table.frame[contract.label.column]).astype(int)
    logger.info(
        "site %s: %s validated (%d of %d rows kept, fingerprint %s)",
        site.site_id, table.report.source, table.report.rows_kept, table.report.rows_read,
        (table.report.fingerprint or "")[:12],
    )
    dataset = TabularDataset(site.site_id, table.frame, labels, table.report, spec)
    return dataset


DatasetOpener = Callable[[SiteConfig, DataSpec], SiteDataset]


def open_dicom_lazily(site: SiteConfig, spec: DataSpec) -> SiteDataset:
    """Open a DICOM dataset, importing the DICOM kind (and MONAI, about 5 s) only on first use."""
    from medfed.sites.dicom.dataset import open_dicom

    return open_dicom(site, spec)


# Data kinds by name. A kind whose module is heavy is registered through a
# function that imports that module on first use, so the tabular path never
# pays for it.
DATASET_KINDS: dict[str, DatasetOpener] = {"tabular": open_tabular, "dicom": open_dicom_lazily}


def open_dataset(site: SiteConfig, spec: DataSpec) -> SiteDataset:
    try:
        opener = DATASET_KINDS[spec.kind]
    except KeyError:
        raise ValueError(f"unknown data kind {spec.kind!r}; known kinds: {', '.join(sorted(DATASET_KINDS))}") from None
    return opener(site, spec)
