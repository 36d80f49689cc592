"""Federated preprocessing for tabular features.

Each site sends, per column, the count, sum and sum of squares of its
training rows (and per-level counts for categorical columns). The centre adds
them up into global means, standard deviations and imputation values, and
every site then applies the same transform. No site's rows and no per-site
mean leave the site: only sums, and only over at least `min_count` values.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)


class TabularFeatures(BaseModel):
    """Contract columns that feed the model, and the encoding of each."""

    model_config = ConfigDict(extra="forbid")

    numeric: list[str] = Field(default_factory=list, description="z-scored with the federated mean and std")
    binary: list[str] = Field(default_factory=list, description="0/1 columns; missing -> federated mean")
    categorical: dict[str, list[float]] = Field(
        default_factory=dict, description="one-hot columns with their levels; missing -> all zeros"
    )
    missing_indicators: list[str] = Field(
        default_factory=list, description="columns that also get a 0/1 'was missing' input"
    )

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.binary, *self.categorical]

    @property
    def input_names(self) -> list[str]:
        names = [*self.numeric, *self.binary]
        for column, levels in self.categorical.items():
            names.extend(f"{column}={level:g}" for level in levels)
        names.extend(f"{column}_missing" for column in self.missing_indicators)
        return names

    @property
    def num_inputs(self) -> int:
        return len(self.input_names)


class ColumnSums(BaseModel):
    """Sufficient statistics of one column over one site's training rows."""

    count: int = 0  # non-missing values summed below
    total: float = 0.0
    total_squares: float = 0.0
    missing: int = 0
    level_counts: dict[str, int] = Field(default_factory=dict)


class SiteStatistics(BaseModel):
    """Per-site sums and counts for federated preprocessing, never rows."""

    site_id: str
    num_rows: int
    columns: dict[str, ColumnSums]
    withheld: list[str] = Field(
        default_factory=list, description="columns whose sums stayed at the site (fewer than min_count values)"
    )


class PreprocessingPlan(BaseModel):
    """Global statistics every site applies in the same way."""

    features: TabularFeatures
    means: dict[str, float]
    stds: dict[str, float]
    num_rows: int
    sites: list[str]
    empty_columns: list[str] = Field(default_factory=list, description="columns no site could share")


def site_statistics(frame: pd.DataFrame, features: TabularFeatures, *, site_id: str, min_count: int) -> SiteStatistics:
    """Compute per-column counts, sums and sums of squares over a site's training rows.

    Small cells stay at the site. A column with fewer than `min_count`
    non-missing values sends a count of zero and no sums. A binary column
    whose ones or zeros number fewer than `min_count` is withheld the same
    way, because its sum is that count. Missing counts and categorical level
    counts below `min_count` are sent as zero.
    """
    columns: dict[str, ColumnSums] = {}
    withheld: list[str] = []
    for column in features.columns:
        values = frame[column].astype(float)
        present = values.dropna()
        missing = int(values.isna().sum())
        sums = ColumnSums(missing=missing if missing >= min_count else 0)
        small_cell = column in features.binary and min(int((present == 1).sum()), int((present == 0).sum())) < min_count
        if len(present) >= min_count and not small_cell:
            sums.count = int(len(present))
            sums.total = float(present.sum())
            sums.total_squares = float((present**2).sum())
            if column in features.categorical:
                levels = {f"{v:g}": int((present == v).sum()) for v in features.categorical[column]}
                sums.level_counts = {level: n if n >= min_count else 0 for level, n in levels.items()}
        elif len(present) > 0:
            withheld.append(column)
        columns[column] = sums
    return SiteStatistics(site_id=site_id, num_rows=len(frame), columns=columns, withheld=withheld)


def merge_statistics(stats: list[SiteStatistics], features: TabularFeatures) -> PreprocessingPlan:
    """Add the sites' sums into global means and standard deviations (population form)."""
    means: dict[str, float] = {}
    stds: dict[str, float] = {}
    empty: list[str] = []
    for column in [*features.numeric, *features.binary]:
        count = sum(s.columns[column].count for s in stats if column in s.columns)
        total = sum(s.columns[column].total for s in stats if column in s.columns)
        squares = sum(s.columns[column].total_squares for s in stats if column in s.columns)
        if count == 0:
            # No site could share this column: it becomes a constant 0 input.
            logger.warning(
                "column %s: no site shared statistics for it (each has fewer than min_count values), "
                "so it is encoded as 0", column,
            )
            empty.append(column)
            means[column], stds[column] = 0.0, 1.0
            continue
        mean = total / count
        variance = max(squares / count - mean**2, 0.0)
        means[column] = mean
        stds[column] = math.sqrt(variance) if variance > 0 else 1.0
    return PreprocessingPlan(
        features=features,
        means=means,
        stds=stds,
        num_rows=sum(s.num_rows for s in stats),
        sites=sorted(s.site_id for s in stats),
        empty_columns=empty,
    )


def transform(frame: pd.DataFrame, plan: PreprocessingPlan) -> torch.Tensor:
    """Encode contract columns into model inputs with the federated statistics."""
    features = plan.features
    parts: list[np.ndarray] = []
    for column in features.numeric:
        values = frame[column].astype(float).to_numpy()
        z = (values - plan.means[column]) / plan.stds[column]
        parts.append(np.nan_to_num(z, nan=0.0))  # missing -> the federated mean
    for column in features.binary:
        values = frame[column].astype(float).to_numpy()
        parts.append(np.where(np.isnan(values), plan.means[column], values))
    for column, levels in features.categorical.items():
        values = frame[column].astype(float).to_numpy()
        for level in levels:
            parts.append((values == level).astype(float))
    for column in features.missing_indicators:
        parts.append(frame[column].isna().to_numpy().astype(float))
    if not parts:
        return torch.zeros((len(frame), 0), dtype=torch.float32)
    return torch.from_numpy(np.stack(parts, axis=1).astype(np.float32))
