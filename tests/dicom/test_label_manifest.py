"""The label manifest of a DICOM study is checked by the tabular contract, with text columns."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfed.data_contracts.tabular import ContractViolation, Policy, TabularContract, load_contract, validate_file


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_shipped_manifest_contract_accepts_good_rows(tmp_path: Path) -> None:
    contract = load_contract("synthetic_ct_lesion_labels")
    manifest = write(tmp_path / "labels.csv", "series_uid,label,mask\n1.2.826.0.1.3,1,masks/a.npy\n1.2.3,0,\n")

    table = validate_file(manifest, contract)

    assert table.report.ok
    assert list(table.frame["series_uid"]) == ["1.2.826.0.1.3", "1.2.3"]
    assert list(table.frame["label"]) == [1, 0]
    assert table.frame["mask"].isna().tolist() == [False, True]


def test_manifest_reports_every_broken_rule_by_row(tmp_path: Path) -> None:
    contract = load_contract("synthetic_ct_lesion_labels")
    manifest = write(
        tmp_path / "labels.csv",
        "series_uid,label,mask\n1.2.3,1,\n1.2.x,0,\n,1,\n1.2.4,2,\n",
    )

    with pytest.raises(ContractViolation) as caught:
        validate_file(manifest, contract)

    broken = {(r.column, r.rule): r.rows for r in caught.value.report.errors}
    assert broken[("series_uid", "pattern")] == [3]
    assert broken[("series_uid", "not_null")] == [4]
    assert broken[("label", "allowed_values")] == [5]
    assert "1.2.x" not in str(caught.value)


def test_manifest_drop_policy_keeps_valid_rows(tmp_path: Path) -> None:
    contract = load_contract("synthetic_ct_lesion_labels")
    manifest = write(tmp_path / "labels.csv", "series_uid,label,mask\n1.2.3,1,\n1.2.x,0,\n")

    table = validate_file(manifest, contract, policy=Policy.DROP)

    assert list(table.frame.index) == [2]


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ({"name": "a", "dtype": "str", "range": [0, 1]}, "numeric columns"),
        ({"name": "a", "dtype": "float", "pattern": "x"}, "dtype str columns only"),
    ],
)
def test_column_rule_rejects_mixed_options(column: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TabularContract.model_validate({"name": "c", "version": "1", "columns": [column]})
