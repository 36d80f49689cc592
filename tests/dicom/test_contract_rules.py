"""Every DICOM contract rule with a good and a bad file, and the scan's report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from dicom_files import ct_dataset
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage, RLELossless

from medfed.data_contracts.dicom import (
    DicomContract,
    DicomContractError,
    check_dataset,
    file_rules,
    load_dicom_contract,
)
from medfed.sites.dicom import index as index_module
from medfed.sites.dicom.index import scan_folder

CONTRACT = DicomContract.model_validate(
    {
        "name": "rules",
        "version": "1",
        "required_tags": ["SeriesInstanceUID", "Modality"],
        "modalities": ["CT"],
        "sop_classes": ["1.2.840.10008.5.1.4.1.1.2"],
        "transfer_syntaxes": ["1.2.840.10008.1.2.1"],
        "photometric_interpretations": ["MONOCHROME2"],
        "geometry": {"rows": [2, 4], "columns": [2, 4], "pixel_spacing_mm": [0.4, 1.0],
                     "slice_thickness_mm": [0.5, 2.0]},
        "deidentification": {
            "empty_or_absent": ["PatientName", "PatientBirthDate"],
            "patient_identity_removed": True,
            "allowed_private_creators": ["GOOD VENDOR"],
        },
    }
)


def nested(depth: int, leaf: Dataset) -> Dataset:
    """Wrap `leaf` in `depth` levels of sequences."""
    item = leaf
    for _ in range(depth):
        outer = Dataset()
        outer.ReferencedImageSequence = [item]
        item = outer
    return item


def set_name_nested(ds: Dataset) -> None:
    leaf = Dataset()
    leaf.PatientName = "Doe^Jane"
    ds.ReferencedStudySequence = [nested(2, leaf)]


def set_private(ds: Dataset, creator: str) -> None:
    ds.private_block(0x0011, creator, create=True).add_new(0x01, "LO", "x")


def set_private_nested(ds: Dataset) -> None:
    leaf = Dataset()
    set_private(leaf, "OTHER VENDOR")
    ds.ReferencedStudySequence = [nested(1, leaf)]


def drop(keyword: str) -> Callable[[Dataset], None]:
    return lambda ds: delattr(ds, keyword)


def assign(keyword: str, value: object) -> Callable[[Dataset], None]:
    return lambda ds: setattr(ds, keyword, value)


# (broken rules as (rule, tag keyword) pairs, change that breaks them)
BAD_CASES: list[tuple[list[tuple[str, str | None]], Callable[[Dataset], None]]] = [
    ([("required_tag", "Modality"), ("allowed_values", "Modality")], drop("Modality")),
    ([("required_tag", "SeriesInstanceUID")], assign("SeriesInstanceUID", "")),
    ([("allowed_values", "Modality")], assign("Modality", "MR")),
    ([("allowed_values", "SOPClassUID")], assign("SOPClassUID", MRImageStorage)),
    ([("allowed_values", "PhotometricInterpretation")], assign("PhotometricInterpretation", "MONOCHROME1")),
    ([("in_range", "Rows")], assign("Rows", 8)),
    ([("in_range", "Columns")], assign("Columns", 1)),
    ([("in_range", "PixelSpacing")], assign("PixelSpacing", [0.5, 1.5])),
    ([("in_range", "SliceThickness")], assign("SliceThickness", 5.0)),
    ([("empty_or_absent", "PatientName")], assign("PatientName", "Doe^Jane")),
    ([("empty_or_absent", "PatientName")], set_name_nested),
    ([("empty_or_absent", "PatientBirthDate")], assign("PatientBirthDate", "19700101")),
    ([("allowed_values", "PatientIdentityRemoved")], assign("PatientIdentityRemoved", "NO")),
    ([("in_range", "PixelSpacing")], drop("PixelSpacing")),
    ([("private_creator", "PrivateCreator")], lambda ds: set_private(ds, "OTHER VENDOR")),
    ([("private_creator", "PrivateCreator")], set_private_nested),
    ([("burned_in_text", None)], assign("BurnedInAnnotation", "YES")),
    ([("burned_in_text", None)], assign("ImageType", ["DERIVED", "SECONDARY", "SCREEN SAVE"])),
]


def good_dataset() -> Dataset:
    ds = ct_dataset(np.zeros((2, 2), dtype=int))
    ds.PatientName = ""
    set_private(ds, "GOOD VENDOR")
    return ds


def test_good_file_breaks_no_rule() -> None:
    assert check_dataset(good_dataset(), CONTRACT) == []


@pytest.mark.parametrize(("expected", "change"), BAD_CASES)
def test_bad_file_breaks_its_rule(expected: list[tuple[str, str | None]], change: Callable[[Dataset], None]) -> None:
    ds = good_dataset()
    change(ds)

    assert check_dataset(ds, CONTRACT) == expected


def test_transfer_syntax_rule(tmp_path: Path) -> None:
    good = good_dataset()
    bad = good_dataset()
    bad.compress(RLELossless, np.zeros((2, 2), dtype=np.uint16), encoding_plugin="pydicom")

    assert check_dataset(good, CONTRACT) == []
    assert check_dataset(bad, CONTRACT) == [("allowed_values", "TransferSyntaxUID")]


def test_every_file_rule_is_declared() -> None:
    declared = {spec.key for spec in file_rules(CONTRACT)}

    for expected, _ in BAD_CASES:
        for violation in expected:
            assert violation in declared


def test_contract_rejects_unknown_keyword() -> None:
    with pytest.raises(ValueError, match="PatientNmae"):
        DicomContract.model_validate({"name": "c", "version": "1", "required_tags": ["PatientNmae"]})


def test_contract_rejects_inverted_range(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: c\nversion: '1'\nkind: dicom\ngeometry: {rows: [10, 2]}\n")

    with pytest.raises(DicomContractError, match="rows: range"):
        load_dicom_contract(path)


def test_shipped_contract_loads() -> None:
    contract = load_dicom_contract("synthetic_ct_lesion")

    assert contract.kind == "dicom"
    assert contract.label_manifest is not None
    assert "PatientName" in contract.deidentification.empty_or_absent


def write_mixed_folder(root: Path) -> None:
    """Write two good CT slices, one that breaks a rule, a text file, an empty file and a corrupt one."""
    for k in range(2):
        ds = good_dataset()
        ds.ImagePositionPatient = [0, 0, k]
        ds.save_as(root / f"ok_{k}.dcm", enforce_file_format=True)
    bad = good_dataset()
    bad.Modality = "MR"
    bad.SeriesInstanceUID = "1.2.3.4"
    (root / "sub").mkdir()
    bad.save_as(root / "sub" / "mr.dcm", enforce_file_format=True)
    (root / "notes.txt").write_text("not an image\n")
    (root / "empty.dcm").write_bytes(b"")
    good = (root / "ok_0.dcm").read_bytes()
    (root / "corrupt.dcm").write_bytes(good[:132] + bytes(range(256)) * 2)


def test_scan_reports_bad_files_and_continues(tmp_path: Path) -> None:
    write_mixed_folder(tmp_path)

    index = scan_folder(tmp_path, CONTRACT, workers=1)

    report = index.report
    broken = {(r.rule, r.column): r for r in report.errors}
    assert broken[("readable", None)].files == ["corrupt.dcm", "empty.dcm", "notes.txt"]
    assert broken[("allowed_values", "Modality")].files == ["sub/mr.dcm"]
    assert report.rows_read == 6
    assert report.rows_kept == 2
    assert len(index.usable_series()) == 1
    assert all(r.passed for r in report.results if r.rule == "in_range")
    assert report.fingerprint is not None


def test_fingerprint_ignores_file_names(tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.mkdir()
    write_mixed_folder(first)
    second = tmp_path / "second"
    second.mkdir()
    for path in first.rglob("*"):
        if path.is_file():
            target = second / path.relative_to(first).with_name("renamed_" + path.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())

    assert scan_folder(first, CONTRACT, workers=1).report.fingerprint == scan_folder(
        second, CONTRACT, workers=1).report.fingerprint


def test_parallel_scan_equals_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mixed_folder(tmp_path)
    monkeypatch.setattr(index_module, "PARALLEL_MIN_FILES", 1)
    monkeypatch.setattr(index_module, "CHUNK_FILES", 2)

    progress: list[tuple[int, int]] = []

    serial = scan_folder(tmp_path, CONTRACT, workers=1)
    parallel = scan_folder(tmp_path, CONTRACT, workers=2, on_progress=lambda done, total: progress.append((done, total)))

    assert parallel.report.model_dump() == serial.report.model_dump()
    assert parallel.series.keys() == serial.series.keys()
    assert progress == [(done, 6) for done in range(1, 7)]  # six chunks of one file


def test_report_holds_no_values(tmp_path: Path) -> None:
    ds = good_dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19700101"
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)

    report = scan_folder(tmp_path, CONTRACT, workers=1).report
    text = json.dumps(report.model_dump(mode="json")) + report.summary()

    assert "Doe" not in text
    assert "19700101" not in text
    assert "a.dcm" in text


@pytest.mark.parametrize("implicit_vr", [True, False])
def test_nested_values_found_in_files(tmp_path: Path, implicit_vr: bool) -> None:
    """Raw elements read from a file carry no VR in implicit VR; nested values must still be found."""
    ds = good_dataset()
    set_name_nested(ds)
    leaf = Dataset()
    set_private(leaf, "OTHER VENDOR")
    ds.ReferencedSeriesSequence = [nested(2, leaf)]
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2" if implicit_vr else "1.2.840.10008.1.2.1"
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)

    read_back = dcmread(tmp_path / "a.dcm", stop_before_pixels=True)

    broken = check_dataset(read_back, CONTRACT)

    assert ("empty_or_absent", "PatientName") in broken
    assert ("private_creator", "PrivateCreator") in broken
    assert len(broken) == (3 if implicit_vr else 2)  # implicit VR also breaks the transfer syntax rule


def test_required_binary_zero_is_present(tmp_path: Path) -> None:
    contract = CONTRACT.model_copy(update={"required_tags": ["PixelRepresentation", "PatientName"]})
    ds = good_dataset()
    ds.PatientName = "   "
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)

    broken = check_dataset(dcmread(tmp_path / "a.dcm", stop_before_pixels=True), contract)

    assert ("required_tag", "PixelRepresentation") not in broken
    assert ("required_tag", "PatientName") in broken


def test_scan_skips_links_outside_root(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    good_dataset().save_as(root / "inside.dcm", enforce_file_format=True)
    good_dataset().save_as(tmp_path / "outside.dcm", enforce_file_format=True)
    (root / "link.dcm").symlink_to(tmp_path / "outside.dcm")

    index = scan_folder(root, CONTRACT, workers=1)

    assert index.report.rows_read == 1
    assert [i.path for entry in index.series.values() for i in entry.instances] == ["inside.dcm"]
