"""Tie indexed series to the labels and masks of the site's label manifest.

The manifest is a CSV checked by its own tabular contract first. Then every
row's key must name an indexed series (or study), keys must be unique, and a
mask path must stay inside the data root and exist. Broken rows are reported
by row number; series without a label are reported by their first file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medfed.data_contracts.dicom import DicomContract, LabelManifestRule
from medfed.data_contracts.report import RuleResult, Severity, capped
from medfed.data_contracts.tabular import Policy, load_contract, validate_file
from medfed.sites.dicom.index import DicomIndex, SeriesEntry

logger = logging.getLogger(__name__)


class LabelManifestError(ValueError):
    """A DICOM contract without a label manifest, or a manifest file outside the data root."""


@dataclass(frozen=True)
class LabelledSeries:
    """A complete series with its label and, where the manifest names one, its mask file."""

    entry: SeriesEntry
    label: int
    mask_path: str | None  # relative to the data root

    def load_mask(self, root: Path) -> np.ndarray:
        """Load the mask as uint8 (slices ordered along the normal, rows, columns)."""
        if self.mask_path is None:
            raise LabelManifestError(f"series of {self.entry.first_path} has no mask in the label manifest")
        return np.load(root / self.mask_path, allow_pickle=False).astype(np.uint8)


def attach_labels(index: DicomIndex, contract: DicomContract, *, policy: Policy = Policy.REFUSE) -> list[LabelledSeries]:
    """Validate the label manifest and return the labelled complete series, in SeriesInstanceUID order.

    Appends the manifest's rule results to `index.report`. Raises the tabular
    contract's ContractViolation when the manifest itself breaks its contract
    under `policy`.
    """
    rule = contract.label_manifest
    if rule is None:
        raise LabelManifestError(f"contract {contract.name} declares no label manifest")
    path = _inside_root(index.root, rule.file)
    index.report.policy = Policy(policy).value
    table = validate_file(path, load_contract(rule.contract), data_root=index.root, policy=policy)
    frame = table.frame

    keys = _series_by_key(index, rule)
    unknown = [int(row) for row, key in frame[rule.key_column].items() if key not in keys]
    duplicated = [int(row) for row in frame.index[frame[rule.key_column].duplicated(keep=False)]]
    bad_masks = _bad_mask_rows(index.root, frame, rule)

    labelled: dict[str, LabelledSeries] = {}
    rejected_rows = set(unknown) | set(duplicated) | set(bad_masks)
    for row, record in frame.iterrows():
        if row in rejected_rows:
            continue
        mask = record[rule.mask_column] if rule.mask_column else None
        for entry in keys[record[rule.key_column]]:
            labelled[entry.uid] = LabelledSeries(entry, int(record[rule.label_column]),
                                                 None if pd.isna(mask) else str(mask))

    usable = [entry for entry in index.usable_series()]
    unlabelled = sorted(entry.first_path for entry in usable if entry.uid not in labelled)
    key_name = rule.key
    index.report.results += [
        _row_result("key_found", rule.key_column, unknown, f"{key_name} must name a series in the index"),
        _row_result("unique_key", rule.key_column, duplicated, f"each {key_name} may appear in one row only"),
        _row_result("mask_file", rule.mask_column, bad_masks,
                    "mask must be a .npy file inside the data root that exists"),
        RuleResult(rule="labelled", column=key_name, passed=not unlabelled, severity=Severity.WARNING,
                   count=len(unlabelled), files=capped(unlabelled),
                   detail="complete series without a row in the label manifest are not used"),
    ]
    items = [labelled[entry.uid] for entry in usable if entry.uid in labelled]
    logger.info(
        "%s: %d of %d complete series labelled (%d positive); %d manifest row(s) rejected",
        index.report.source, len(items), len(usable), sum(item.label for item in items), len(rejected_rows),
    )
    return items


def _inside_root(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise LabelManifestError(f"label manifest path {relative!r} is outside the data root")
    return path


def _series_by_key(index: DicomIndex, rule: LabelManifestRule) -> dict[str, list[SeriesEntry]]:
    keys: dict[str, list[SeriesEntry]] = {}
    for entry in index.series.values():
        key = entry.uid if rule.key == "SeriesInstanceUID" else entry.study_uid
        keys.setdefault(key, []).append(entry)
    return keys


def _bad_mask_rows(root: Path, frame: pd.DataFrame, rule: LabelManifestRule) -> list[int]:
    if rule.mask_column is None:
        return []
    bad = []
    for row, mask in frame[rule.mask_column].items():
        if pd.isna(mask):
            continue
        path = (root / str(mask)).resolve()
        if not path.is_relative_to(root.resolve()) or path.suffix != ".npy" or not path.is_file():
            bad.append(int(row))
    return bad


def _row_result(rule: str, column: str | None, rows: list[int], detail: str) -> RuleResult:
    rows = sorted(set(rows))
    return RuleResult(rule=rule, column=column, passed=not rows, count=len(rows), rows=capped(rows), detail=detail)
