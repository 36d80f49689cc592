"""Every rule of the tabular contract, with a passing and a failing case, on real CSV files."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfed.data_contracts.tabular import (
    ContractViolation,
    Policy,
    TabularContract,
    load_contract,
    validate_file,
)

REPO = Path(__file__).resolve().parent.parent
CLEVELAND = REPO / "data" / "heart_disease" / "cleveland" / "processed.cleveland.data"
# A value no real row holds, planted to prove that reports never carry values.
PLANTED = "987.654"


@pytest.fixture(scope="module")
def contract() -> TabularContract:
    return load_contract("uci_heart_disease")


def _rows(count: int = 60) -> list[list[str]]:
    return [line.split(",") for line in CLEVELAND.read_text().splitlines()[:count]]


def _write(tmp_path: Path, rows: list[list[str]]) -> Path:
    path = tmp_path / "table.csv"
    path.write_text("".join(",".join(row) + "\n" for row in rows))
    return path


def _result(report, rule: str, column: str | None):
    matches = [r for r in report.results if r.rule == rule and r.column == column]
    assert len(matches) == 1, f"expected one result for {rule}/{column}"
    return matches[0]


@pytest.mark.parametrize("site", ["cleveland", "hungarian", "switzerland", "va"])
def test_bundled_site_files_meet_contract(site: str, contract: TabularContract) -> None:
    path = REPO / "data" / "heart_disease" / site / f"processed.{site}.data"
    table = validate_file(path, contract, data_root=path.parent, policy=Policy.REFUSE)
    assert table.report.ok
    assert table.report.rows_kept == table.report.rows_read == len(path.read_text().splitlines())
    assert len(table.report.fingerprint or "") == 64


def test_clean_file_passes_every_rule(tmp_path: Path, contract: TabularContract) -> None:
    report = validate_file(_write(tmp_path, _rows()), contract, policy=Policy.REFUSE).report
    assert all(r.passed for r in report.results)
    assert {r.rule for r in report.results} >= {
        "columns_match", "dtype", "not_null", "integer", "in_range", "allowed_values", "min_rows",
        "zero_means_missing",
    }


def test_missing_column_names_file_and_column(tmp_path: Path, contract: TabularContract) -> None:
    rows = [row[:-1] for row in _rows()]
    with pytest.raises(ContractViolation, match=r"table\.csv: column num: rule column_present") as info:
        validate_file(_write(tmp_path, rows), contract, policy=Policy.DROP)
    assert not info.value.report.ok


def test_extra_column_rejected(tmp_path: Path, contract: TabularContract) -> None:
    rows = [[*row, "1"] for row in _rows()]
    with pytest.raises(ContractViolation, match=r"column column_15: rule no_extra_columns"):
        validate_file(_write(tmp_path, rows), contract, policy=Policy.DROP)


def test_wrong_type_reports_row_not_value(tmp_path: Path, contract: TabularContract) -> None:
    rows = _rows()
    rows[4][4] = "high"
    with pytest.raises(ContractViolation, match=r"column chol: rule dtype broken by 1 row\(s\) or file\(s\) \[5\]") as info:
        validate_file(_write(tmp_path, rows), contract, policy=Policy.REFUSE)
    assert "high" not in str(info.value)
    assert "high" not in info.value.report.model_dump_json()


def test_out_of_range_value_reports_rule_and_row(tmp_path: Path, contract: TabularContract) -> None:
    rows = _rows()
    rows[9][3] = PLANTED  # trestbps far above 250 mm Hg
    with pytest.raises(ContractViolation, match=r"column trestbps: rule in_range broken by 1 .*\[10\]") as info:
        validate_file(_write(tmp_path, rows), contract, policy=Policy.REFUSE)
    assert PLANTED not in str(info.value)
    assert PLANTED not in info.value.report.model_dump_json()


def test_value_not_allowed_reports_rule(tmp_path: Path, contract: TabularContract) -> None:
    rows = _rows()
    rows[0][2] = "7.0"  # cp takes 1 to 4
    with pytest.raises(ContractViolation, match=r"column cp: rule allowed_values broken by 1 .*\[1\]"):
        validate_file(_write(tmp_path, rows), contract, policy=Policy.REFUSE)


def test_non_integer_value_reports_rule(tmp_path: Path, contract: TabularContract) -> None:
    rows = _rows()
    rows[2][0] = "54.5"  # age is a whole number of years
    with pytest.raises(ContractViolation, match=r"column age: rule integer broken by 1 .*\[3\]"):
        validate_file(_write(tmp_path, rows), contract, policy=Policy.REFUSE)


def test_missing_required_value_reports_not_null(tmp_path: Path, contract: TabularContract) -> None:
    rows = _rows()
    rows[6][13] = "?"  # the label is required
    with pytest.raises(ContractViolation, match=r"column num: rule not_null broken by 1 .*\[7\]"):
        validate_file(_write(tmp_path, rows), contract, policy=Policy.REFUSE)


def test_too_few_rows_rejected_even_with_drop(tmp_path: Path, contract: TabularContract) -> None:
    with pytest.raises(ContractViolation, match=r"rule min_rows.*at least 50 valid rows required, 49 found"):
        validate_file(_write(tmp_path, _rows(49)), contract, policy=Policy.DROP)
    assert validate_file(_write(tmp_path, _rows(50)), contract, policy=Policy.DROP).report.ok


def test_zero_means_missing_becomes_null_and_is_counted(tmp_path: Path, contract: TabularContract) -> None:
    rows = _rows()
    rows[1][4] = "0"
    table = validate_file(_write(tmp_path, rows), contract, policy=Policy.REFUSE)
    note = _result(table.report, "zero_means_missing", "chol")
    assert note.passed
    assert note.count == 1
    assert note.rows == [2]
    assert table.frame.loc[2, "chol"] != table.frame.loc[2, "chol"]  # NaN


def test_drop_policy_keeps_valid_rows(tmp_path: Path, contract: TabularContract) -> None:
    rows = _rows()
    rows[4][4] = "high"
    rows[9][3] = PLANTED
    table = validate_file(_write(tmp_path, rows), contract, policy=Policy.DROP)
    assert table.report.rows_read == 60
    assert table.report.rows_kept == 58
    assert 5 not in table.frame.index
    assert 10 not in table.frame.index
    assert not table.report.ok  # the broken rules stay in the report


def test_refuse_policy_trains_on_nothing(tmp_path: Path, contract: TabularContract) -> None:
    rows = _rows()
    rows[0][2] = "7.0"
    with pytest.raises(ContractViolation) as info:
        validate_file(_write(tmp_path, rows), contract, policy=Policy.REFUSE)
    assert info.value.report.rows_kept == 0


def test_every_violation_reported_at_once(tmp_path: Path, contract: TabularContract) -> None:
    rows = _rows()
    rows[0][2] = "7.0"
    rows[1][4] = "abc"
    rows[2][0] = "54.5"
    with pytest.raises(ContractViolation) as info:
        validate_file(_write(tmp_path, rows), contract, policy=Policy.REFUSE)
    broken = {(r.rule, r.column) for r in info.value.report.errors}
    assert broken == {("allowed_values", "cp"), ("dtype", "chol"), ("integer", "age")}


def test_fingerprint_depends_on_content_not_file_name(tmp_path: Path, contract: TabularContract) -> None:
    first = _write(tmp_path, _rows())
    second = tmp_path / "renamed.data"
    second.write_bytes(first.read_bytes())
    a = validate_file(first, contract).report.fingerprint
    b = validate_file(second, contract).report.fingerprint
    rows = _rows()
    rows[0][0] = "64.0"
    c = validate_file(_write(tmp_path / "other" if (tmp_path / "other").mkdir() is None else tmp_path, rows),
                      contract).report.fingerprint
    assert a == b
    assert a != c


def test_latin1_file_rejected_without_its_bytes(tmp_path: Path, contract: TabularContract) -> None:
    rows = _rows()
    path = tmp_path / "table.csv"
    text = "".join(",".join(row) + "\n" for row in rows).replace("63.0", "Müller", 1)
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ContractViolation, match=r"table\.csv: column -: rule encoding .*not valid utf-8-sig text") as info:
        validate_file(path, contract, policy=Policy.DROP)
    assert "\\xfc" not in str(info.value)
    assert "0xfc" not in str(info.value)
    assert "ller" not in str(info.value)


def test_compressed_file_rejected_as_encoding(tmp_path: Path, contract: TabularContract) -> None:
    import gzip

    path = tmp_path / "table.csv"
    path.write_bytes(gzip.compress(CLEVELAND.read_bytes()))
    with pytest.raises(ContractViolation, match="rule encoding.*not compressed"):
        validate_file(path, contract, policy=Policy.DROP)


def test_unbalanced_quote_rejected_as_csv_format(tmp_path: Path, contract: TabularContract) -> None:
    rows = _rows()
    rows[5][1] = '"1.0'
    with pytest.raises(ContractViolation, match=r"rule csv_format.*cannot be parsed") as info:
        validate_file(_write(tmp_path, rows), contract, policy=Policy.DROP)
    assert '"1.0' not in str(info.value)


def test_empty_file_rejected_as_empty(tmp_path: Path, contract: TabularContract) -> None:
    path = tmp_path / "table.csv"
    path.write_text("\n")
    with pytest.raises(ContractViolation, match=r"rule not_empty.*holds no rows") as info:
        validate_file(path, contract, policy=Policy.DROP)
    assert [r.rule for r in info.value.report.errors] == ["not_empty"]


def test_wrong_delimiter_gets_a_hint(tmp_path: Path, contract: TabularContract) -> None:
    path = tmp_path / "table.csv"
    path.write_text("".join(";".join(row) + "\n" for row in _rows()))
    with pytest.raises(ContractViolation, match=r"column sex: rule column_present.*separated by ','"):
        validate_file(path, contract, policy=Policy.DROP)


def test_unexpected_header_line_rejected(tmp_path: Path, contract: TabularContract) -> None:
    rows = [contract.column_names, *_rows()]
    with pytest.raises(ContractViolation, match=r"rule no_header_line broken by 1 .*\[1\].*remove that line"):
        validate_file(_write(tmp_path, rows), contract, policy=Policy.DROP)


def test_file_with_byte_order_mark_and_crlf_accepted(tmp_path: Path, contract: TabularContract) -> None:
    path = tmp_path / "table.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(",".join(r) + "\r\n" for r in _rows()).encode())
    assert validate_file(path, contract, policy=Policy.REFUSE).report.rows_kept == 60
