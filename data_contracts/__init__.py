"""Data contracts: versioned YAML rules that every site's data must meet before training.

The report model in `report` is shared by every kind of contract (tabular,
DICOM); it carries counts, row numbers and relative file paths, never values.
"""

from medfed.data_contracts.report import ContractReport, RuleResult, Severity

__all__ = ["ContractReport", "RuleResult", "Severity"]
