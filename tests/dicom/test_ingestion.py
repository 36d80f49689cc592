"""Ingestion to tensors on tiny hand-made files, values checked exactly."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import numpy as np
import pytest
from dicom_files import WriteCT, ct_dataset
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    EnhancedCTImageStorage,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    RLELossless,
)

from medfed.data_contracts.dicom import DicomContract, MissingRescale, MultipleSeries
from medfed.sites.dicom import codecs
from medfed.sites.dicom.index import SeriesNotFoundError, scan_folder
from medfed.sites.dicom.pixels import (
    DecoderMissingError,
    HeaderlessRejectedError,
    MissingGeometryError,
    MissingRescaleError,
    ReadOptions,
    TruncatedPixelDataError,
    read_instance,
)
from medfed.sites.dicom.volume import SeriesIncompleteError, load_all_series, load_files, load_series


def relative_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*.dcm"))


def test_rescale_applied_per_slice(tmp_path: Path, write_ct: WriteCT) -> None:
    write_ct("s/a.dcm", [[0, 10], [100, 1000]], slope=1.0, intercept=-1024.0, position=(0, 0, 0))
    write_ct("s/b.dcm", [[0, 10], [100, 1000]], slope=2.0, intercept=-1000.0, position=(0, 0, 1))

    volume = load_files(tmp_path, relative_files(tmp_path), "")

    assert volume.values.dtype == np.float32
    np.testing.assert_array_equal(volume.values[0], [[-1024, -1014], [-924, -24]])
    np.testing.assert_array_equal(volume.values[1], [[-1000, -980], [-800, 1000]])


def test_ct_without_intercept_is_error(tmp_path: Path, write_ct: WriteCT) -> None:
    write_ct("a.dcm", [[5, 6], [7, 8]], intercept=None)

    with pytest.raises(MissingRescaleError, match="RescaleIntercept"):
        read_instance(tmp_path, "a.dcm", ReadOptions())


def test_ct_without_intercept_identity_recorded(tmp_path: Path, write_ct: WriteCT) -> None:
    write_ct("a.dcm", [[5, 6], [7, 8]], intercept=None)
    options = ReadOptions(ct_missing_rescale=MissingRescale.IDENTITY)

    instance = read_instance(tmp_path, "a.dcm", options)
    volume = load_files(tmp_path, ["a.dcm"], "", options)

    np.testing.assert_array_equal(instance.values[0], [[5, 6], [7, 8]])
    assert instance.notes["rescale_default"] == "slope 1, intercept 0"
    assert volume.provenance["files_rescale_default"] == 1


def test_monochrome1_equals_monochrome2_twin(tmp_path: Path, write_ct: WriteCT) -> None:
    stored = np.array([[0, 100], [2000, 4095]])
    write_ct("mono1.dcm", stored, photometric="MONOCHROME1", slope=2.0, intercept=-1024.0)
    write_ct("mono2.dcm", 4095 - stored, photometric="MONOCHROME2", slope=2.0, intercept=-1024.0)

    mono1 = read_instance(tmp_path, "mono1.dcm", ReadOptions())
    mono2 = read_instance(tmp_path, "mono2.dcm", ReadOptions())

    np.testing.assert_array_equal(mono1.values, mono2.values)
    np.testing.assert_array_equal(mono1.values[0], [[7166, 6966], [3166, -1024]])
    assert mono1.notes["monochrome1_inverted"] is True
    assert "monochrome1_inverted" not in mono2.notes


def test_monochrome1_signed_inversion(tmp_path: Path, write_ct: WriteCT) -> None:
    write_ct("mono1.dcm", [[-2048, 0], [1, 2047]], photometric="MONOCHROME1", signed=True, intercept=0.0)
    write_ct("mono2.dcm", [[2047, -1], [-2, -2048]], photometric="MONOCHROME2", signed=True, intercept=0.0)

    mono1 = read_instance(tmp_path, "mono1.dcm", ReadOptions())
    mono2 = read_instance(tmp_path, "mono2.dcm", ReadOptions())

    np.testing.assert_array_equal(mono1.values, mono2.values)


def write_shuffled_slices(write_ct: WriteCT, normal: np.ndarray, orientation: tuple[float, ...]) -> None:
    """Write five slices 2.5 mm apart along `normal`, file names and InstanceNumbers saying nothing."""
    names = ["e.dcm", "a.dcm", "d.dcm", "b.dcm", "c.dcm"]
    for k, name in zip([3, 0, 4, 1, 2], names, strict=True):
        position = np.array([10.0, -5.0, 7.0]) + k * 2.5 * normal
        write_ct(f"series/{name}", [[k, k], [k, k]], position=tuple(position), orientation=orientation,
                 instance_number=1, intercept=0.0)


@pytest.mark.parametrize(
    "orientation",
    [
        (1, 0, 0, 0, 1, 0),  # axial: normal +z
        (0, 1, 0, 0, 0, -1),  # sagittal: normal -x
        (0.6, 0.8, 0, 0, 0, 1),  # oblique
    ],
)
def test_slices_sorted_along_normal(tmp_path: Path, write_ct: WriteCT, orientation: tuple[float, ...]) -> None:
    normal = np.cross(orientation[:3], orientation[3:])
    write_shuffled_slices(write_ct, normal, orientation)
    files = relative_files(tmp_path)

    results = [load_files(tmp_path, list(order), "") for order in itertools.permutations(files, 5)][:24]

    for volume in results:
        np.testing.assert_array_equal(volume.values[:, 0, 0], [0, 1, 2, 3, 4])
        assert volume.spacing == pytest.approx((2.5, 0.5, 0.5))
        np.testing.assert_allclose(volume.affine[:3, 3], [10.0, -5.0, 7.0])
        np.testing.assert_allclose(volume.affine[:3, 2], normal * 2.5, atol=1e-12)


def test_index_orders_series_like_listing(tmp_path: Path, write_ct: WriteCT, ct_contract: DicomContract) -> None:
    write_shuffled_slices(write_ct, np.array([0.0, 0.0, 1.0]), (1, 0, 0, 0, 1, 0))

    index = scan_folder(tmp_path, ct_contract, workers=1)
    volume = load_series(index, next(iter(index.series)))

    np.testing.assert_array_equal(volume.values[:, 0, 0], [0, 1, 2, 3, 4])


def test_duplicate_slice_position_rejected(tmp_path: Path, write_ct: WriteCT) -> None:
    write_ct("a.dcm", [[1, 1], [1, 1]], position=(0, 0, 0))
    write_ct("b.dcm", [[2, 2], [2, 2]], position=(0, 0, 0))

    with pytest.raises(SeriesIncompleteError, match="share one position"):
        load_files(tmp_path, ["a.dcm", "b.dcm"], "")


def test_uneven_slice_gaps_rejected(tmp_path: Path, write_ct: WriteCT) -> None:
    for k, z in enumerate([0.0, 1.0, 3.0]):
        write_ct(f"{k}.dcm", [[k, k], [k, k]], position=(0, 0, z))

    with pytest.raises(SeriesIncompleteError, match="spacing tolerance"):
        load_files(tmp_path, ["0.dcm", "1.dcm", "2.dcm"], "")


def test_two_series_two_items(tmp_path: Path, write_ct: WriteCT, ct_contract: DicomContract) -> None:
    for k in range(2):
        write_ct(f"one_{k}.dcm", [[1, 1], [1, 1]], series_uid="1.2.3.1", position=(0, 0, k))
        write_ct(f"two_{k}.dcm", [[2, 2], [2, 2]], series_uid="1.2.3.2", position=(0, 0, k))

    index = scan_folder(tmp_path, ct_contract, workers=1)
    volumes = load_all_series(index)

    assert [volume.series_uid for volume in volumes] == ["1.2.3.1", "1.2.3.2"]
    assert [volume.values.shape for volume in volumes] == [(2, 2, 2), (2, 2, 2)]
    assert [float(volume.values[0, 0, 0]) for volume in volumes] == [-1023.0, -1022.0]
    with pytest.raises(SeriesNotFoundError, match="2 series are indexed"):
        load_series(index, "1.2.3.9")
    with pytest.raises(SeriesIncompleteError, match="never merged"):
        load_files(tmp_path, relative_files(tmp_path), "")


def test_two_series_one_study_reject_policy(tmp_path: Path, write_ct: WriteCT, ct_contract: DicomContract) -> None:
    write_ct("one.dcm", [[1, 1], [1, 1]], series_uid="1.2.3.1")
    write_ct("two.dcm", [[2, 2], [2, 2]], series_uid="1.2.3.2")
    contract = ct_contract.model_copy(update={"ingestion": ct_contract.ingestion.model_copy(
        update={"multiple_series_per_study": MultipleSeries.REJECT})})

    index = scan_folder(tmp_path, contract, workers=1)

    broken = {(r.rule, r.column): r for r in index.report.errors}
    assert broken[("one_series_per_study", "StudyInstanceUID")].count == 2
    assert index.usable_series() == []


def enhanced_ct(frames: np.ndarray, *, with_positions: bool = True) -> Dataset:
    """Return an Enhanced CT data set with geometry and rescale in functional groups."""
    ds = ct_dataset(frames[0], intercept=None, slope=None)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness"):
        del ds[keyword]
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.NumberOfFrames = len(frames)
    ds.PixelData = frames.astype(np.uint16).tobytes()

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.8, 0.6]
    measures.SliceThickness = 4.0
    shared.PixelMeasuresSequence = [measures]
    plane = Dataset()
    plane.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = [plane]
    ds.SharedFunctionalGroupsSequence = [shared]

    per_frame = []
    for number, z in enumerate([8.0, 0.0, 4.0][: len(frames)]):  # stored out of order
        group = Dataset()
        if with_positions:
            position = Dataset()
            position.ImagePositionPatient = [-20.0, 30.0, z]
            group.PlanePositionSequence = [position]
        transform = Dataset()
        transform.RescaleSlope = 1.0 + number
        transform.RescaleIntercept = -100.0 * number
        group.PixelValueTransformationSequence = [transform]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    return ds


def test_enhanced_geometry_from_functional_groups(tmp_path: Path) -> None:
    frames = np.array([[[10, 10], [10, 10]], [[20, 20], [20, 20]], [[30, 30], [30, 30]]])
    enhanced_ct(frames).save_as(tmp_path / "mf.dcm", enforce_file_format=True)

    volume = load_files(tmp_path, ["mf.dcm"], "")

    # Stored frames sit at z = 8, 0, 4 with slopes 1, 2, 3 and intercepts 0, -100, -200.
    np.testing.assert_array_equal(volume.values[:, 0, 0], [2 * 20 - 100, 3 * 30 - 200, 10])
    assert volume.spacing == pytest.approx((4.0, 0.8, 0.6))
    np.testing.assert_allclose(volume.affine[:3, 3], [-20.0, 30.0, 0.0])
    np.testing.assert_allclose(np.diag(volume.affine)[:3], [0.6, 0.8, 4.0])
    assert volume.provenance["geometry_source"] == {"functional groups": 1}


def test_enhanced_without_positions_rejected(tmp_path: Path) -> None:
    frames = np.array([[[10, 10], [10, 10]], [[20, 20], [20, 20]]])
    enhanced_ct(frames, with_positions=False).save_as(tmp_path / "mf.dcm", enforce_file_format=True)

    with pytest.raises(MissingGeometryError, match="frame 1: functional groups lack .*PlanePositionSequence"):
        load_files(tmp_path, ["mf.dcm"], "")


def test_image_without_position_rejected(tmp_path: Path, write_ct: WriteCT) -> None:
    ds = ct_dataset([[1, 2], [3, 4]])
    del ds.ImagePositionPatient
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)

    with pytest.raises(MissingGeometryError, match=r"missing \['ImagePositionPatient'\]"):
        load_files(tmp_path, ["a.dcm"], "")


def write_truncated(path: Path) -> None:
    """Write a 4x4 CT slice whose PixelData element declares 32 bytes but the file ends after 20."""
    ds = ct_dataset(np.arange(16).reshape(4, 4), position=(0, 0, 1))
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    path.write_bytes(data[:-12])


def test_truncated_slice_rejected_with_counts(tmp_path: Path, write_ct: WriteCT, ct_contract: DicomContract) -> None:
    write_ct("s/a.dcm", np.zeros((4, 4), dtype=int), position=(0, 0, 0))
    write_truncated(tmp_path / "s" / "b.dcm")

    with pytest.raises(TruncatedPixelDataError, match="expected 32 bytes .* found 20") as caught:
        read_instance(tmp_path, "s/b.dcm", ReadOptions())
    assert (caught.value.expected, caught.value.found) == (32, 20)

    index = scan_folder(tmp_path, ct_contract, workers=1)
    broken = {(r.rule, r.column): r for r in index.report.errors}
    assert broken[("pixel_data_complete", "PixelData")].files == ["s/b.dcm"]
    assert broken[("series_complete", None)].count == 1
    series = next(iter(index.series.values()))
    assert not series.complete
    with pytest.raises(SeriesIncompleteError, match="1 file"):
        load_series(index, series.uid)


def test_short_declared_pixel_length_rejected(tmp_path: Path, write_ct: WriteCT) -> None:
    ds = ct_dataset(np.arange(16).reshape(4, 4))
    ds.PixelData = ds.PixelData[:24]
    ds.save_as(tmp_path / "a.dcm", enforce_file_format=True)

    with pytest.raises(TruncatedPixelDataError, match="expected 32 bytes .* found 24"):
        read_instance(tmp_path, "a.dcm", ReadOptions())


def write_headerless(path: Path, pixels: np.ndarray, *, pixel_bytes: bytes | None = None) -> None:
    """Write a data set as implicit VR little endian with no preamble and no file meta."""
    ds = ct_dataset(pixels)
    if pixel_bytes is not None:
        ds.PixelData = pixel_bytes
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
    data = path.read_bytes()
    assert data[128:132] != b"DICM"


def test_headerless_rejected_in_strict_mode(tmp_path: Path, ct_contract: DicomContract) -> None:
    write_headerless(tmp_path / "raw.dcm", np.array([[1, 2], [3, 4]]))

    with pytest.raises(HeaderlessRejectedError, match="Part-10"):
        read_instance(tmp_path, "raw.dcm", ReadOptions())

    index = scan_folder(tmp_path, ct_contract, workers=1)
    broken = {(r.rule, r.column): r for r in index.report.errors}
    assert broken[("part10_header", None)].files == ["raw.dcm"]
    assert index.series == {}


def test_headerless_read_in_tolerant_mode(tmp_path: Path, ct_contract: DicomContract) -> None:
    write_headerless(tmp_path / "raw.dcm", np.array([[1, 2], [3, 4]]))
    options = ReadOptions(tolerant_headerless=True)

    instance = read_instance(tmp_path, "raw.dcm", options)
    index = scan_folder(tmp_path, ct_contract, workers=1, tolerant=True)

    np.testing.assert_array_equal(instance.values[0], [[-1023, -1022], [-1021, -1020]])
    assert instance.notes["transfer_syntax_inferred"] is True
    assert instance.notes["transfer_syntax"] == ImplicitVRLittleEndian
    assert index.report.ok
    assert len(index.usable_series()) == 1


def test_headerless_inconsistent_length_rejected(tmp_path: Path) -> None:
    write_headerless(tmp_path / "raw.dcm", np.array([[1, 2], [3, 4]]), pixel_bytes=b"\x00" * 6)

    with pytest.raises(HeaderlessRejectedError, match="PixelData has 6 bytes, its image attributes require 8"):
        read_instance(tmp_path, "raw.dcm", ReadOptions(tolerant_headerless=True))


def test_rle_slice_decodes(tmp_path: Path) -> None:
    stored = np.array([[0, 1], [4094, 4095]], dtype=np.uint16)
    ds = ct_dataset(stored, intercept=-1024.0, slope=1.0)
    ds.compress(RLELossless, stored, encoding_plugin="pydicom")
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)

    instance = read_instance(tmp_path, "rle.dcm", ReadOptions())

    np.testing.assert_array_equal(instance.values[0], [[-1024, -1023], [3070, 3071]])
    assert instance.notes["transfer_syntax"] == RLELossless


def write_jpeg_lossless_claim(path: Path) -> None:
    """Write a file whose transfer syntax is JPEG Lossless; its frame bytes are never decoded."""
    ds = ct_dataset(np.zeros((2, 2), dtype=int))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def test_missing_decoder_reported_with_package(
    tmp_path: Path, ct_contract: DicomContract, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"]

    codecs.decoder_gap.cache_clear()
    monkeypatch.setattr(codecs, "get_decoder", lambda uid: Unavailable())
    write_jpeg_lossless_claim(tmp_path / "jpeg.dcm")

    index = scan_folder(tmp_path, ct_contract, workers=1)
    with pytest.raises(DecoderMissingError) as caught:
        read_instance(tmp_path, "jpeg.dcm", ReadOptions())
    codecs.decoder_gap.cache_clear()

    rule = next(r for r in index.report.errors if r.rule == "decoder_available")
    assert rule.column == f"TransferSyntaxUID={JPEGLosslessSV1}"
    assert rule.files == ["jpeg.dcm"]
    assert "pylibjpeg pylibjpeg-libjpeg" in rule.detail
    assert JPEGLosslessSV1 in str(caught.value)
    assert "pylibjpeg-libjpeg" in str(caught.value)
    assert index.usable_series() == []


def test_installed_decoders_match_pydicom(tmp_path: Path) -> None:
    """Without pylibjpeg, JPEG Lossless has no decoder here and must be reported, not crash."""
    write_jpeg_lossless_claim(tmp_path / "jpeg.dcm")
    codecs.decoder_gap.cache_clear()
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed; the missing-decoder path is covered above")
    with pytest.raises(DecoderMissingError, match="pylibjpeg-libjpeg"):
        read_instance(tmp_path, "jpeg.dcm", ReadOptions())


def test_big_endian_pixel_length_measured(tmp_path: Path, ct_contract: DicomContract) -> None:
    ds = ct_dataset(np.arange(4).reshape(2, 2))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.2"
    ds.PixelData = np.arange(4, dtype=">u2").tobytes()
    ds.save_as(tmp_path / "be.dcm", enforce_file_format=True)
    header_bytes = (tmp_path / "be.dcm").read_bytes()
    assert struct.pack(">HH", 0x7FE0, 0x0010) in header_bytes

    index = scan_folder(tmp_path, ct_contract, workers=1)
    volume = load_series(index, next(iter(index.series)))

    assert index.report.ok
    np.testing.assert_array_equal(volume.values[0], [[-1024, -1023], [-1022, -1021]])
