"""Tabular data contracts: the YAML model, validation with pandera, and the site policy.

Validation reads every value as text first, so that a value of the wrong type
is reported as such instead of becoming a parse error. Then missing markers
and "0 means missing" rules turn values into nulls, and pandera checks ranges,
allowed values and nulls lazily, so that every broken rule is reported at
once. pandera's failure cases carry the failing values themselves; only their
row positions are kept.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
from collections import defaultdict
from enum import StrEnum
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pandera.pandas as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from medfed.data_contracts.files import read_contract_text
from medfed.data_contracts.report import ContractReport, RuleResult, Severity, capped

logger = logging.getLogger(__name__)


class ContractViolation(ValueError):
    """The data breaks its contract and the site's policy does not allow training on it."""

    def __init__(self, report: ContractReport) -> None:
        super().__init__(
            f"{report.source} does not meet contract {report.contract} {report.contract_version}:\n"
            f"{report.summary()}"
        )
        self.report = report


class Policy(StrEnum):
    """Site policy for rows that break a row-level rule."""

    DROP = "drop"  # drop the offending rows and train on the rest
    REFUSE = "refuse"  # train on nothing until the data is fixed


class ColumnRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    dtype: Literal["int", "float", "str"] = "float"
    unit: str | None = None
    description: str | None = None
    range: tuple[float, float] | None = None
    allowed: list[float] | None = None
    # Regular expression that every value of a "str" column must match in full.
    pattern: str | None = None
    nullable: bool = True
    zero_means_missing: bool = False

    @model_validator(mode="after")
    def _check_bounds(self) -> ColumnRule:
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"column {self.name}: range {list(self.range)} has min > max")
        numeric_only = {"range": self.range, "allowed": self.allowed, "zero_means_missing": self.zero_means_missing}
        if self.dtype == "str":
            used = [key for key, value in numeric_only.items() if value]
            if used:
                raise ValueError(f"column {self.name}: {used} apply to numeric columns, not dtype str")
        elif self.pattern is not None:
            raise ValueError(f"column {self.name}: pattern applies to dtype str columns only")
        return self


class FileFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    header: bool = True
    delimiter: str = ","
    # "utf-8-sig" reads UTF-8 with or without the byte-order mark some exporters write.
    encoding: str = "utf-8-sig"
    missing_markers: list[str] = Field(default_factory=lambda: ["", "NA"])


class LabelRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    column: str
    positive_when: str = Field(description="Comparison against a number, such as '> 0' or '== 1'.")

    def positive(self, values: pd.Series) -> pd.Series:
        op, _, threshold = self.positive_when.strip().partition(" ")
        number = float(threshold)
        comparisons = {">": values.gt, ">=": values.ge, "==": values.eq, "<": values.lt, "<=": values.le}
        if op not in comparisons:
            raise ValueError(f"label rule {self.positive_when!r}: operator must be one of {list(comparisons)}")
        return comparisons[op](number)


class TabularContract(BaseModel):
    """A versioned tabular contract, as written in YAML."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    kind: Literal["tabular"] = "tabular"
    description: str = ""
    format: FileFormat = Field(default_factory=FileFormat)
    min_rows: int = Field(default=1, ge=1)
    label: LabelRule | None = None
    columns: list[ColumnRule]

    @model_validator(mode="after")
    def _check_label(self) -> TabularContract:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("column names in a contract must be unique")
        if self.label is not None and self.label.column not in names:
            raise ValueError(f"label column {self.label.column!r} is not a contract column")
        return self

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def label_column(self) -> str | None:
        return self.label.column if self.label else None


def load_contract(reference: str | Path) -> TabularContract:
    """Load a contract by file path or by the name of one shipped in `data_contracts/`."""
    text = read_contract_text(reference)
    return TabularContract.model_validate(yaml.safe_load(text))


class ValidatedTable(BaseModel):
    """The rows kept after validation, with the report that describes them."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    # Numbers for int and float columns, text for str columns, nulls for missing;
    # the index is the 1-based source row number.
    frame: pd.DataFrame
    report: ContractReport


def validate_file(
    path: Path,
    contract: TabularContract,
    *,
    data_root: Path | None = None,
    policy: Policy = Policy.REFUSE,
) -> ValidatedTable:
    """Validate a CSV file against `contract` and apply the site's policy.

    Returns the kept rows. Raises ContractViolation when the file cannot be
    used: a missing or extra column, fewer rows than `min_rows` after
    dropping, or any broken row rule under the `refuse` policy.
    """
    source = _relative_name(path, data_root)
    report = ContractReport(
        contract=contract.name, contract_version=contract.version, source=source, policy=policy.value
    )
    raw = _read_as_text(path, contract, report)
    report.rows_read = len(raw)
    if not report.ok:
        raise ContractViolation(report)

    numeric, bad_rows = _check_values(raw, contract, report)
    kept = numeric.drop(index=sorted(bad_rows))
    if policy == Policy.DROP or not bad_rows:
        report.rows_kept = len(kept)
    else:
        report.rows_kept = 0  # refuse: nothing is used until the rows are fixed

    min_rows_ok = len(kept) >= contract.min_rows
    report.results.append(
        RuleResult(
            rule="min_rows",
            passed=min_rows_ok,
            count=0 if min_rows_ok else 1,
            detail=f"at least {contract.min_rows} valid rows required, {len(kept)} found",
        )
    )
    report.fingerprint = fingerprint(kept)
    if not report.ok and (policy == Policy.REFUSE or not min_rows_ok):
        raise ContractViolation(report)
    if bad_rows:
        logger.warning(
            "%s: dropped %d of %d rows that break contract %s (policy drop)",
            source, len(bad_rows), len(numeric), contract.name,
        )
    return ValidatedTable(frame=kept, report=report)


def fingerprint(frame: pd.DataFrame) -> str:
    """Hash the validated values (not the file name or layout) so sites can compare data versions."""
    canonical = frame.to_csv(index=False, header=True, na_rep="", float_format="%.10g")
    return hashlib.sha256(canonical.encode()).hexdigest()


def _relative_name(path: Path, data_root: Path | None) -> str:
    if data_root is not None:
        try:
            return str(path.resolve().relative_to(data_root.resolve()))
        except ValueError:
            pass
    return path.name


def _read_as_text(path: Path, contract: TabularContract, report: ContractReport) -> pd.DataFrame:
    """Read every field as a string; report file-level problems and missing or extra columns."""
    expected = contract.column_names
    fmt = contract.format
    text = _decode(path, fmt.encoding, report)
    if text is None:
        return pd.DataFrame(columns=expected)
    if not text.strip():
        report.results.append(RuleResult(rule="not_empty", passed=False, count=1, detail="the file holds no rows"))
        return pd.DataFrame(columns=expected)
    try:
        raw = pd.read_csv(
            io.StringIO(text),
            header=0 if fmt.header else None,
            sep=fmt.delimiter,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            on_bad_lines="error",
            engine="python",
        )
    except (pd.errors.ParserError, csv.Error) as exc:
        # The parser's message can quote file content, so only its line number is kept.
        line = re.search(r"(?:line|row) (\d+)", str(exc))
        report.results.append(RuleResult(
            rule="csv_format", passed=False, count=1, rows=[int(line.group(1))] if line else [],
            detail=f"the file cannot be parsed as {fmt.delimiter!r}-separated text "
                   "(an unbalanced quote or a broken line)",
        ))
        return pd.DataFrame(columns=expected)

    first_line = 2 if fmt.header else 1
    raw.index = pd.RangeIndex(first_line, first_line + len(raw))
    if fmt.header:
        found = [str(c).strip() for c in raw.columns]
        raw.columns = found
    else:
        found = expected[: raw.shape[1]] + [f"column_{i + 1}" for i in range(len(expected), raw.shape[1])]
        raw.columns = found
        if _looks_like_header(raw, expected):
            report.results.append(RuleResult(
                rule="no_header_line", passed=False, count=1, rows=[1],
                detail="line 1 holds column names, but files under this contract have no header line; "
                       "remove that line",
            ))
            return raw
    missing = [c for c in expected if c not in found]
    extra = [c for c in found if c not in expected]
    hint = ""
    if raw.shape[1] == 1 and len(expected) > 1:
        hint = f"; every line has one field, so check that fields are separated by {fmt.delimiter!r}"
    for name in missing:
        report.results.append(
            RuleResult(rule="column_present", column=name, passed=False, count=1,
                       detail=f"required column is missing{hint}")
        )
    for name in extra:
        report.results.append(
            RuleResult(rule="no_extra_columns", column=name, passed=False, count=1,
                       detail="column is not in the contract")
        )
    if not missing and not extra:
        report.results.append(
            RuleResult(rule="columns_match", passed=True, detail=f"{len(expected)} columns in contract order")
        )
        raw = raw[expected]
    return raw


def _decode(path: Path, encoding: str, report: ContractReport) -> str | None:
    """Return the file's text, or None after reporting that it is not valid `encoding` text."""
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        report.results.append(RuleResult(
            rule="encoding", passed=False, count=1,
            detail=f"the file is not valid {encoding} text (first invalid byte at offset {exc.start}); "
                   f"export it as {encoding}, or check that it is not compressed",
        ))
        return None


def _looks_like_header(raw: pd.DataFrame, expected: list[str]) -> bool:
    if raw.empty:
        return False
    first = {str(v).strip().lower() for v in raw.iloc[0]}
    return len(first & {name.lower() for name in expected}) >= max(2, len(expected) // 2)


def _check_values(
    raw: pd.DataFrame, contract: TabularContract, report: ContractReport
) -> tuple[pd.DataFrame, set[int]]:
    """Parse, apply missing rules and run the pandera checks; return values and bad row numbers."""
    markers = set(contract.format.missing_markers)
    stripped = raw.apply(lambda col: col.str.strip())
    is_marker = stripped.isin(markers)
    numeric = stripped.mask(is_marker).apply(pd.to_numeric, errors="coerce")
    text_columns = [rule.name for rule in contract.columns if rule.dtype == "str"]
    numeric[text_columns] = stripped[text_columns].mask(is_marker[text_columns])
    bad_rows: set[int] = set()

    # Rule: parseable number. A text value that is neither a number nor a missing marker.
    for rule in contract.columns:
        if rule.dtype == "str":
            continue
        unparsable = numeric[rule.name].isna() & ~is_marker[rule.name]
        rows = [int(r) for r in raw.index[unparsable]]
        report.results.append(
            RuleResult(rule="dtype", column=rule.name, passed=not rows, count=len(rows), rows=capped(rows),
                       detail=f"values must be {rule.dtype} numbers or one of the missing markers")
        )
        bad_rows.update(rows)

    # Rule: zero means missing. Not a violation, but counted so that the report shows it.
    for rule in contract.columns:
        if rule.zero_means_missing:
            zeros = numeric[rule.name].eq(0)
            rows = [int(r) for r in raw.index[zeros]]
            numeric.loc[zeros, rule.name] = np.nan
            report.results.append(
                RuleResult(rule="zero_means_missing", column=rule.name, passed=True,
                           severity=Severity.WARNING, count=len(rows), rows=capped(rows),
                           detail="0 is recorded as missing for this column")
            )

    failures = _pandera_failures(numeric, contract)
    for rule in contract.columns:
        for check_name, detail in _rule_checks(rule):
            rows = sorted(failures.get((rule.name, check_name), set()))
            report.results.append(
                RuleResult(rule=check_name, column=rule.name, passed=not rows, count=len(rows),
                           rows=capped(rows), detail=detail)
            )
            bad_rows.update(rows)
    return numeric, bad_rows


def _rule_checks(rule: ColumnRule) -> list[tuple[str, str]]:
    """Name and describe the checks that apply to a column, in report order."""
    checks: list[tuple[str, str]] = []
    if not rule.nullable:
        checks.append(("not_null", "value required, missing markers not allowed"))
    if rule.dtype == "int":
        checks.append(("integer", "values must be whole numbers"))
    if rule.range is not None:
        unit = f" {rule.unit}" if rule.unit else ""
        checks.append(("in_range", f"values must lie in [{rule.range[0]:g}, {rule.range[1]:g}]{unit}"))
    if rule.allowed is not None:
        checks.append(("allowed_values", f"values must be one of {[f'{v:g}' for v in rule.allowed]}"))
    if rule.pattern is not None:
        checks.append(("pattern", f"values must match the regular expression {rule.pattern}"))
    return checks


def _pandera_schema(contract: TabularContract) -> pa.DataFrameSchema:
    columns: dict[str, pa.Column] = {}
    for rule in contract.columns:
        checks = []
        if rule.dtype == "int":
            checks.append(pa.Check(lambda s: (s % 1 == 0), element_wise=False, name="integer", ignore_na=True))
        if rule.range is not None:
            low, high = rule.range
            checks.append(pa.Check.in_range(low, high, name="in_range"))
        if rule.allowed is not None:
            checks.append(pa.Check.isin(rule.allowed, name="allowed_values"))
        if rule.pattern is not None:
            checks.append(
                pa.Check(lambda s, regex=rule.pattern: s.str.fullmatch(regex), name="pattern", ignore_na=True)
            )
        dtype = str if rule.dtype == "str" else float
        columns[rule.name] = pa.Column(dtype, checks=checks, nullable=rule.nullable, name=rule.name)
    return pa.DataFrameSchema(columns, strict=True, ordered=True, coerce=True)


PANDERA_CHECK_RULES = {"not_nullable": "not_null", "isin": "allowed_values"}


def _pandera_failures(numeric: pd.DataFrame, contract: TabularContract) -> dict[tuple[str, str], set[int]]:
    """Run the pandera schema lazily and map each failure to (column, check) -> row numbers."""
    failures: dict[tuple[str, str], set[int]] = defaultdict(set)
    try:
        numeric_types = {rule.name: float for rule in contract.columns if rule.dtype != "str"}
        _pandera_schema(contract).validate(numeric.astype(numeric_types), lazy=True)
    except pa.errors.SchemaErrors as exc:
        # failure_cases contains the failing values, so only column, check and row are kept.
        cases = exc.failure_cases[["column", "check", "index"]]
        for column, check, index in cases.itertuples(index=False):
            if column is None or index is None or pd.isna(index):
                continue
            # pandera names its built-in checks by function ("isin([0.0, 1.0])"),
            # not by the name passed to Check; map them back to the rule names.
            name = str(check).split("(")[0]
            name = PANDERA_CHECK_RULES.get(name, name)
            failures[(str(column), name)].add(int(index))
    return failures
