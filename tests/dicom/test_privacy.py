"""Patient values planted in a file never reach logs, warnings, reports or errors; burned-in text stays on site."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from dicom_files import ct_dataset
from pydicom.dataset import Dataset

from medfed.data_contracts.dicom import BurnedInAction, DicomContract
from medfed.sites.dicom.index import scan_folder
from medfed.sites.dicom.labels import attach_labels
from medfed.sites.dicom.pixels import IngestionError
from medfed.sites.dicom.volume import load_all_series, load_files

PLANTED_NAME = "Plantedname^Secretperson"
PLANTED_BIRTH_DATE = "19411207"
PLANTED_ID = "MRN-8675309"
# An invalid date, so that pydicom would warn about it while reading unless told not to.
PLANTED_BAD_DATE = "1941-12-07"
NEEDLES = ("Plantedname", "Secretperson", PLANTED_BIRTH_DATE, PLANTED_ID, PLANTED_BAD_DATE)


def plant(ds: Dataset) -> None:
    """Put the patient values in standard tags, a private block and a three-level nested sequence."""
    ds.PatientName = PLANTED_NAME
    ds.PatientBirthDate = PLANTED_BIRTH_DATE
    ds.PatientID = PLANTED_ID
    ds.StudyDate = PLANTED_BAD_DATE
    block = ds.private_block(0x0013, "HOSPITAL PRIVATE", create=True)
    block.add_new(0x01, "LO", PLANTED_NAME)
    block.add_new(0x02, "DA", PLANTED_BIRTH_DATE)

    leaf = Dataset()
    leaf.PatientName = PLANTED_NAME
    leaf.PatientBirthDate = PLANTED_BIRTH_DATE
    leaf.private_block(0x0015, "NESTED PRIVATE", create=True).add_new(0x01, "LO", PLANTED_ID)
    middle = Dataset()
    middle.ReferencedImageSequence = [leaf]
    top = Dataset()
    top.ReferencedSeriesSequence = [middle]
    ds.ReferencedStudySequence = [top]


def write_planted_site(root: Path) -> None:
    """Write a two-slice series, a truncated copy in a second series, and a label manifest."""
    for k in range(2):
        ds = ct_dataset(np.full((2, 2), 100 + k), position=(0, 0, k), series_uid="1.2.3.1")
        plant(ds)
        ds.save_as(root / "dicom" / f"slice_{k}.dcm", enforce_file_format=True)
    broken = ct_dataset(np.full((4, 4), 7), series_uid="1.2.3.2")
    plant(broken)
    broken.save_as(root / "dicom" / "broken.dcm", enforce_file_format=True)
    (root / "dicom" / "broken.dcm").write_bytes((root / "dicom" / "broken.dcm").read_bytes()[:-10])
    (root / "labels.csv").write_text("series_uid,label,mask\n1.2.3.1,1,\n1.2.3.2,0,\n1.2.3.9,1,\n")


def contract_for(deidentified: bool) -> DicomContract:
    deidentification = {"empty_or_absent": ["PatientName", "PatientBirthDate"],
                        "allowed_private_creators": []} if deidentified else {}
    return DicomContract.model_validate({
        "name": "privacy", "version": "1", "modalities": ["CT"],
        "deidentification": deidentification,
        "label_manifest": {"file": "labels.csv", "contract": "synthetic_ct_lesion_labels", "mask_column": "mask"},
    })


@pytest.mark.parametrize("deidentified", [False, True])
def test_planted_values_never_leave(tmp_path: Path, caplog: pytest.LogCaptureFixture, deidentified: bool) -> None:
    (tmp_path / "dicom").mkdir()
    write_planted_site(tmp_path)
    contract = contract_for(deidentified)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pydicom")
    caplog.clear()  # writing the planted files logged pydicom's own warnings
    texts: list[str] = []

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = scan_folder(tmp_path, contract, subfolder="dicom", workers=1)
        items = attach_labels(index, contract)
        volumes = load_all_series(index)
        for relative in ("dicom/broken.dcm", "dicom/slice_0.dcm"):
            try:
                load_files(tmp_path, [relative], "")
            except IngestionError as exc:
                texts.append(str(exc))

    texts += [json.dumps(index.report.model_dump(mode="json")), index.report.summary()]
    texts += [json.dumps(volume.provenance) for volume in volumes]
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(warning.message) for warning in caught]
    everything = "\n".join(texts)

    for needle in NEEDLES:
        assert needle not in everything
    assert "dicom/broken.dcm" in everything  # the truncated file is named by path
    if deidentified:
        assert items == []
        assert {r.rule for r in index.report.errors} >= {"empty_or_absent", "private_creator"}
    else:
        assert [item.label for item in items] == [1]
        assert len(volumes) == 1


def burned_in_site(root: Path) -> None:
    for k in range(2):
        ds = ct_dataset(np.full((2, 2), k), position=(0, 0, k), series_uid="1.2.3.1")
        ds.save_as(root / f"clean_{k}.dcm", enforce_file_format=True)
    flagged = ct_dataset(np.full((2, 2), 5), series_uid="1.2.3.2")
    flagged.BurnedInAnnotation = "YES"
    flagged.save_as(root / "annotated.dcm", enforce_file_format=True)
    capture = ct_dataset(np.full((2, 2), 6), series_uid="1.2.3.3")
    capture.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    capture.Modality = "OT"
    capture.save_as(root / "capture.dcm", enforce_file_format=True)


def test_burned_in_excluded_by_default(tmp_path: Path) -> None:
    burned_in_site(tmp_path)
    contract = DicomContract(name="burned", version="1")

    index = scan_folder(tmp_path, contract, workers=1)

    flagged = next(r for r in index.report.results if r.rule == "burned_in_text")
    assert flagged.files == ["annotated.dcm", "capture.dcm"]
    assert flagged.severity == "warning"
    assert [entry.uid for entry in index.usable_series()] == ["1.2.3.1"]
    assert index.series["1.2.3.2"].rejected_files == ["annotated.dcm"]


def test_burned_in_flagged_never_leaves(tmp_path: Path) -> None:
    burned_in_site(tmp_path)
    contract = DicomContract.model_validate(
        {"name": "burned", "version": "1", "burned_in_text": {"action": BurnedInAction.FLAG}}
    )

    index = scan_folder(tmp_path, contract, workers=1)

    assert [entry.uid for entry in index.usable_series()] == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert [entry.may_leave_site for entry in index.usable_series()] == [True, False, False]
