"""Label manifest rules against the index: unknown keys, duplicates, masks, study keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_files import WriteCT

from medfed.data_contracts.dicom import DicomContract
from medfed.data_contracts.tabular import ContractViolation
from medfed.sites.dicom.index import scan_folder
from medfed.sites.dicom.labels import LabelManifestError, attach_labels


def contract(key: str = "SeriesInstanceUID", manifest: str = "labels.csv") -> DicomContract:
    return DicomContract.model_validate({
        "name": "labels", "version": "1",
        "label_manifest": {"file": manifest, "contract": "synthetic_ct_lesion_labels", "key": key,
                           "mask_column": "mask"},
    })


def write_two_series(root: Path, write_ct: WriteCT) -> None:
    write_ct("dicom/one.dcm", [[1, 1], [1, 1]], series_uid="1.2.3.1", study_uid="1.2.9.1")
    write_ct("dicom/two.dcm", [[2, 2], [2, 2]], series_uid="1.2.3.2", study_uid="1.2.9.2")
    (root / "masks").mkdir()
    np.save(root / "masks" / "one.npy", np.ones((1, 2, 2), dtype=np.uint8), allow_pickle=False)


def test_manifest_rows_checked_against_index(tmp_path: Path, write_ct: WriteCT) -> None:
    write_two_series(tmp_path, write_ct)
    (tmp_path / "labels.csv").write_text(
        "series_uid,label,mask\n"
        "1.2.3.1,1,masks/one.npy\n"
        "1.2.3.7,0,\n"
        "1.2.3.1,1,\n"
        "1.2.3.2,1,masks/missing.npy\n"
    )
    index = scan_folder(tmp_path, contract(), subfolder="dicom", workers=1)

    items = attach_labels(index, contract())

    results = {r.rule: r for r in index.report.results}
    assert results["key_found"].rows == [3]
    assert results["unique_key"].rows == [2, 4]
    assert results["mask_file"].rows == [5]
    assert results["labelled"].files == ["dicom/one.dcm", "dicom/two.dcm"]
    assert items == []


def test_mask_outside_root_rejected(tmp_path: Path, write_ct: WriteCT) -> None:
    write_two_series(tmp_path, write_ct)
    (tmp_path / "labels.csv").write_text("series_uid,label,mask\n1.2.3.1,1,masks/../../outside.npy\n")
    (tmp_path.parent / "outside.npy").write_bytes(b"")
    index = scan_folder(tmp_path, contract(), subfolder="dicom", workers=1)

    items = attach_labels(index, contract())

    assert items == []
    assert next(r for r in index.report.results if r.rule == "mask_file").rows == [2]


def test_study_key_labels_its_series(tmp_path: Path, write_ct: WriteCT) -> None:
    write_two_series(tmp_path, write_ct)
    (tmp_path / "labels.csv").write_text("series_uid,label,mask\n1.2.9.2,1,\n1.2.9.1,0,masks/one.npy\n")
    index = scan_folder(tmp_path, contract("StudyInstanceUID"), subfolder="dicom", workers=1)

    items = attach_labels(index, contract("StudyInstanceUID"))

    assert [(item.entry.uid, item.label, item.mask_path) for item in items] == [
        ("1.2.3.1", 0, "masks/one.npy"), ("1.2.3.2", 1, None)]
    np.testing.assert_array_equal(items[0].load_mask(tmp_path), np.ones((1, 2, 2)))


def test_manifest_breaking_its_contract_raises(tmp_path: Path, write_ct: WriteCT) -> None:
    write_two_series(tmp_path, write_ct)
    (tmp_path / "labels.csv").write_text("series_uid,label,mask\n1.2.3.1,yes,\n")
    index = scan_folder(tmp_path, contract(), subfolder="dicom", workers=1)

    with pytest.raises(ContractViolation, match="label"):
        attach_labels(index, contract())


def test_manifest_path_outside_root_rejected(tmp_path: Path, write_ct: WriteCT) -> None:
    write_two_series(tmp_path, write_ct)
    index = scan_folder(tmp_path, contract(manifest="../labels.csv"), subfolder="dicom", workers=1)

    with pytest.raises(LabelManifestError, match="outside the data root"):
        attach_labels(index, contract(manifest="../labels.csv"))
