"""Validation report shared by all contract kinds.

A report lists one result per rule and column (or DICOM tag): whether it
passed, how many rows or files broke it, and which ones, by 1-based row number
in the source file or by path relative to the site's data root. It never holds
a data value, so it may be printed, logged and sent to MLflow.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field

# Row numbers or file paths listed per rule; the count is always complete.
MAX_LOCATIONS_LISTED = 50


class Severity(StrEnum):
    """Effect of a broken rule on training."""

    ERROR = "error"  # rows or files that break it are dropped or training is refused
    WARNING = "warning"  # reported only


class RuleResult(BaseModel):
    """Outcome of one contract rule on one column, tag or the whole file."""

    rule: str = Field(description="Rule name, for example 'in_range' or 'allowed_values'.")
    column: str | None = Field(default=None, description="Column name or DICOM tag keyword.")
    passed: bool
    severity: Severity = Severity.ERROR
    count: int = Field(default=0, description="Number of rows or files that break the rule.")
    rows: list[int] = Field(default_factory=list, description="1-based line numbers, capped.")
    files: list[str] = Field(default_factory=list, description="Paths relative to the data root.")
    detail: str = Field(default="", description="The rule in words; never a data value.")

    def locations(self) -> str:
        """Format the listed rows or files, noting how many more there are."""
        listed: list[str] = [str(r) for r in self.rows] or list(self.files)
        text = ", ".join(listed)
        hidden = self.count - len(listed)
        if listed and hidden > 0:
            text += f" (+{hidden} more)"
        return text


class ContractReport(BaseModel):
    """Validation of one data source against one contract."""

    contract: str
    contract_version: str
    source: str = Field(description="File or folder, relative to the site's data root.")
    rows_read: int = 0
    rows_kept: int = 0
    policy: str = "refuse"
    results: list[RuleResult] = Field(default_factory=list)
    fingerprint: str | None = Field(
        default=None, description="sha256 of the validated content, not of file names."
    )

    @property
    def errors(self) -> list[RuleResult]:
        """Results of error rules that failed."""
        return [r for r in self.results if not r.passed and r.severity == Severity.ERROR]

    @property
    def ok(self) -> bool:
        """Whether every error rule passed."""
        return not self.errors

    def summary(self) -> str:
        """Describe every failed error rule in one line each: file, column, rule, count."""
        lines = [
            f"{self.source}: column {r.column or '-'}: rule {r.rule} broken by {r.count} "
            f"row(s) or file(s) [{r.locations()}]: {r.detail}"
            for r in self.errors
        ]
        return "\n".join(lines)

    def for_export(self) -> ContractReport:
        """Return a copy fit to leave the site: counts and row numbers, no file paths.

        Hospital exports often name folders and files after patients or
        accession numbers, so relative paths stay in the site's own report
        (`medfed site check`) and only their counts are sent.
        """
        results = [r.model_copy(update={"files": []}) for r in self.results]
        return self.model_copy(update={"results": results})

    def write_json(self, path: Path) -> Path:
        """Write the report as JSON and return the path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path


def capped(locations: list[int] | list[str]) -> list:
    """Return at most MAX_LOCATIONS_LISTED row numbers or file paths, in order."""
    return sorted(locations)[:MAX_LOCATIONS_LISTED]
