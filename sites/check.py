"""Site readiness: is the config valid and does each dataset meet its contract?

The report names files relative to the data root, columns by name and rows
by number; it never shows a data value. A DICOM dataset is checked from its
headers only (no pixel data is decoded), with its label manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from medfed.data_contracts.files import contract_kind
from medfed.data_contracts.report import ContractReport
from medfed.data_contracts.tabular import ContractViolation, Policy, load_contract, validate_file
from medfed.sites.config import SiteConfig, load_site_config

logger = logging.getLogger(__name__)


@dataclass
class CheckItem:
    name: str
    ready: bool
    detail: str
    fix: str = ""


@dataclass
class SiteCheck:
    config_path: Path
    config: SiteConfig | None = None
    items: list[CheckItem] = field(default_factory=list)
    reports: list[ContractReport] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(item.ready for item in self.items)


def check_site(config_path: Path) -> SiteCheck:
    """Run every readiness check that needs no server."""
    outcome = SiteCheck(config_path=config_path)
    try:
        config = load_site_config(config_path)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        outcome.items.append(CheckItem("site config", False, str(exc), "fix the YAML file and run the check again"))
        return outcome
    outcome.config = config
    outcome.items.append(CheckItem("site config", True, f"site {config.site_id}, {len(config.datasets)} dataset(s)"))
    if not config.data_root.is_dir():
        outcome.items.append(CheckItem("data root", False, f"{config.data_root} is not a folder",
                                       "set data_root to the folder that holds the site's data"))
        return outcome
    for binding in config.datasets:
        outcome.items.append(_check_dataset(config, binding.name, outcome.reports))
    return outcome


def _check_dataset(config: SiteConfig, name: str, reports: list[ContractReport]) -> CheckItem:
    label = f"dataset {name}"
    binding = config.dataset(name)
    if contract_kind(binding.contract) == "dicom":
        return _check_dicom_dataset(config, name, reports)
    try:
        contract = load_contract(binding.contract)
        path = config.dataset_path(name)
    except (FileNotFoundError, ValueError, ValidationError) as exc:
        return CheckItem(label, False, str(exc), "fix the dataset's contract or path in the site config")
    if not path.is_file():
        return CheckItem(label, False, f"{binding.path} not found under the data root",
                         "copy the export there or fix the path")
    try:
        table = validate_file(path, contract, data_root=config.data_root, policy=config.policy)
    except ContractViolation as exc:
        reports.append(exc.report)
        return CheckItem(label, False, f"{exc.report.source} breaks contract {contract.name} {contract.version}",
                         _how_to_fix(exc.report, config))
    reports.append(table.report)
    dropped = table.report.rows_read - table.report.rows_kept
    detail = f"{table.report.rows_kept} of {table.report.rows_read} rows usable under contract {contract.name} {contract.version}"
    if dropped:
        detail += f" ({dropped} dropped by policy drop)"
    return CheckItem(label, True, detail)


def _check_dicom_dataset(config: SiteConfig, name: str, reports: list[ContractReport]) -> CheckItem:
    """Scan a DICOM folder's headers and its label manifest against the DICOM contract."""
    from medfed.data_contracts.dicom import DicomContractError, load_dicom_contract
    from medfed.sites.dicom.index import scan_folder
    from medfed.sites.dicom.labels import LabelManifestError, attach_labels

    label = f"dataset {name}"
    binding = config.dataset(name)
    try:
        contract = load_dicom_contract(binding.contract)
        config.dataset_path(name)  # rejects a path that leaves the data root
    except (FileNotFoundError, DicomContractError, ValueError) as exc:
        return CheckItem(label, False, str(exc), "fix the dataset's contract or path in the site config")
    try:
        index = scan_folder(config.data_root, contract, subfolder=binding.path)
    except FileNotFoundError as exc:
        return CheckItem(label, False, str(exc), "copy the DICOM export there or fix the path")
    reports.append(index.report)
    try:
        items = attach_labels(index, contract, policy=config.policy)
    except ContractViolation as exc:
        reports.append(exc.report)
        return CheckItem(label, False, f"label manifest {exc.report.source} breaks its contract",
                         "fix the manifest rows listed below, or set policy: drop to train without them")
    except (LabelManifestError, FileNotFoundError, ValueError) as exc:
        return CheckItem(label, False, str(exc), "fix the label manifest named in the contract")

    report = index.report
    counts = (f"{report.rows_kept} of {report.rows_read} files usable, {len(items)} labelled complete "
              f"series under contract {contract.name} {contract.version}")
    if not report.ok and config.policy == Policy.REFUSE:
        return CheckItem(label, False, f"{report.source} breaks contract {contract.name} {contract.version}: {counts}",
                         "fix the files listed below, or set policy: drop to train without them")
    if len(items) < contract.min_series:
        return CheckItem(label, False, f"{counts}; the contract requires at least {contract.min_series}",
                         "add labelled series or fix the ones listed below")
    return CheckItem(label, True, counts)


# Rules that hold for each row; the others are about the whole file.
ROW_RULES = {"dtype", "not_null", "integer", "in_range", "allowed_values", "pattern"}


def _how_to_fix(report: ContractReport, config: SiteConfig) -> str:
    """Suggest the fix that matches the broken rules and the site's policy."""
    broken = {r.rule for r in report.errors}
    if broken - ROW_RULES - {"min_rows"}:
        return "fix the file itself (format, columns or encoding): see the failed rules below"
    if "min_rows" in broken:
        return "too few usable rows: fix the rows listed below or export more data"
    if config.policy == "drop":
        return "fix the rows listed below"
    return "fix the rows listed below, or set policy: drop to train without them"


def render_check(outcome: SiteCheck, console: Console) -> None:
    """Print the readiness table and one table per contract report."""
    summary = Table(title=f"Readiness of {outcome.config_path}")
    summary.add_column("check")
    summary.add_column("status")
    summary.add_column("detail", overflow="fold")
    summary.add_column("how to fix", overflow="fold")
    for item in outcome.items:
        summary.add_row(item.name, "[green]ready" if item.ready else "[red]not ready", item.detail, item.fix)
    console.print(summary)
    for report in outcome.reports:
        table = Table(title=f"{report.source}: contract {report.contract} {report.contract_version}, "
                            f"policy {report.policy}")
        for column in ("rule", "column or tag", "result", "count", "rows or files", "rule detail"):
            table.add_column(column, overflow="fold")
        for result in report.results:
            if result.passed:
                status = "note" if result.count else "pass"
            elif result.severity == "error":
                status = "[red]FAIL"
            else:
                status = "[yellow]warn"
            detail = result.detail if not result.passed or result.count else ""
            table.add_row(result.rule, result.column or "-", status, str(result.count), result.locations(), detail)
        console.print(table)
    console.print("[green]Site is ready." if outcome.ready else "[red]Site is not ready: see the tables above.")
