"""Sweep the real files of the pydicom-data package: each loads and matches pydicom, or is rejected clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from medfed.data_contracts.dicom import MissingRescale
from medfed.sites.dicom.index import scan_folder
from medfed.sites.dicom.pixels import (
    DecoderMissingError,
    HeaderlessRejectedError,
    IngestionError,
    ReadOptions,
    UnsupportedImageError,
    read_instance,
    stored_value_range,
)
from medfed.sites.dicom.reader import PERMISSIVE_CONTRACT
from medfed.sites.dicom.volume import load_files

data_store = pytest.importorskip("data_store", reason="the pydicom-data package (test extra) is not installed")
ROOT = Path(data_store.__file__).parent / "data"
FILES = sorted(path.name for path in ROOT.glob("*.dcm"))
# Accept images without geometry in pixel units, as a sweep over mixed modalities must.
OPTIONS = ReadOptions(require_geometry=False, ct_missing_rescale=MissingRescale.IDENTITY)


def pydicom_reference(ds: Dataset, shape: tuple[int, ...]) -> np.ndarray:
    """Return pydicom's decoded values with the modality LUT, as MONOCHROME2.

    pydicom 3.0's apply_modality_lut ignores the rescale in an enhanced
    image's functional groups, so the shared group's slope and intercept are
    applied here as the standard places them (DICOM PS3.3 C.7.6.16.2.9).
    """
    stored = ds.pixel_array.reshape(shape)
    shared = ds.get("SharedFunctionalGroupsSequence")
    transform = shared[0].get("PixelValueTransformationSequence") if shared else None
    if transform:
        values = stored * float(transform[0].RescaleSlope) + float(transform[0].RescaleIntercept)
    else:
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        low, high = apply_modality_lut(np.array(stored_value_range(ds)), ds)
        values = (low + high) - values
    return values


def outcome_of(name: str) -> str:
    """Load one file, compare with pydicom, and describe the outcome in one line."""
    try:
        instance = read_instance(ROOT, name, OPTIONS)
    except IngestionError as exc:
        assert exc.reason
        return f"rejected ({type(exc).__name__}): {exc.reason}"
    reference = pydicom_reference(dcmread(ROOT / name), instance.values.shape)
    np.testing.assert_allclose(instance.values, reference.astype(np.float32), rtol=0, atol=1e-3, err_msg=name)
    try:
        volume = load_files(ROOT, [name], "", OPTIONS)
    except IngestionError as exc:
        return f"values match pydicom; volume rejected: {exc.reason}"
    return f"values match pydicom; volume {volume.values.shape}"


def test_sweep_every_file(capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = {name: outcome_of(name) for name in FILES}

    with capsys.disabled():
        print(f"\npydicom-data sweep, {len(FILES)} files:")
        for name, outcome in outcomes.items():
            print(f"  {name}: {outcome}")
    loaded = [name for name, outcome in outcomes.items() if outcome.startswith("values match")]
    assert len(FILES) == 68
    assert len(loaded) >= 25
    for name in ("693_UNCI.dcm", "MR2_UNCR.dcm", "emri_small_RLE.dcm", "liver.dcm", "eCT_Supplemental.dcm"):
        assert outcomes[name].startswith("values match pydicom; volume"), name


@pytest.mark.parametrize(
    ("name", "error", "reason"),
    [
        ("SC_rgb.dcm", UnsupportedImageError, "PhotometricInterpretation RGB"),
        ("OT-PAL-8-face.dcm", HeaderlessRejectedError, "no Part-10 preamble"),
        ("emri_small_jpeg_2k_lossless_too_short.dcm", IngestionError, "truncated or corrupt"),
    ],
)
def test_known_rejections(name: str, error: type[IngestionError], reason: str) -> None:
    with pytest.raises(error, match=reason):
        read_instance(ROOT, name, OPTIONS)


def test_jpeg_lossless_without_decoder() -> None:
    from pydicom.pixels import get_decoder

    if get_decoder("1.2.840.10008.1.2.4.70").is_available:
        assert outcome_of("JPEG-LL.dcm").startswith("values match")
    else:
        with pytest.raises(DecoderMissingError, match=r"1\.2\.840\.10008\.1\.2\.4\.70.*pylibjpeg-libjpeg"):
            read_instance(ROOT, "JPEG-LL.dcm", OPTIONS)


def test_scan_survives_every_file() -> None:
    index = scan_folder(ROOT, PERMISSIVE_CONTRACT, workers=1)

    broken = {(r.rule, r.column): r for r in index.report.errors}
    assert index.report.rows_read == len(FILES)
    assert broken[("part10_header", None)].files == ["OT-PAL-8-face.dcm"]
    assert "emri_small_jpeg_2k_lossless_too_short.dcm" in broken[("pixel_data_complete", "PixelData")].files
    assert ("allowed_values", "PhotometricInterpretation") in broken
