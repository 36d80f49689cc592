"""Assemble the decoded files of one series into a volume with its geometry.

Slices (or the frames of enhanced multi-frame files) are ordered by their
position along the slice normal, never by InstanceNumber or file name. The
normal is the cross product of the row and column directions in
ImageOrientationPatient. Enhanced images take position, orientation and
spacing from their functional groups, and missing geometry is an error.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medfed.data_contracts.dicom import pixel_spacing
from medfed.sites.dicom.index import DicomIndex
from medfed.sites.dicom.pixels import (
    DecodedInstance,
    IngestionError,
    MissingGeometryError,
    ReadOptions,
    read_instance,
)

logger = logging.getLogger(__name__)

# Largest difference between two slices' direction cosines that still counts as one orientation.
ORIENTATION_TOLERANCE = 1e-4


class SeriesIncompleteError(IngestionError):
    """A series with a rejected file or an irregular stack; it is not loaded in part."""


@dataclass
class Frame:
    """One 2D image with its geometry in patient coordinates (LPS, mm)."""

    values: np.ndarray  # (rows, columns)
    path: str
    position: np.ndarray | None  # ImagePositionPatient of the first transmitted pixel
    orientation: np.ndarray | None  # row direction cosines, then column direction cosines
    spacing: tuple[float, float] | None  # (between rows, between columns)
    thickness: float | None


@dataclass
class SeriesVolume:
    """A series as (slices, rows, columns) float32 MONOCHROME2 modality values with its geometry.

    `affine` maps the index (column, row, slice), in that order, to patient
    coordinates in mm (DICOM LPS), as ITK and MONAI's readers do before any
    conversion to RAS.
    """

    series_uid: str
    values: np.ndarray
    spacing: tuple[float, float, float]  # (slice, row, column) in mm
    affine: np.ndarray
    files: list[str]
    provenance: dict[str, object] = field(default_factory=dict)


def load_series(
    index: DicomIndex, series_uid: str, options: ReadOptions | None = None, tolerance_mm: float = 0.01
) -> SeriesVolume:
    """Load one indexed series; raise SeriesNotFoundError or an IngestionError when it cannot be used."""
    entry = index.get(series_uid)
    if not entry.complete:
        reason = entry.geometry_problem or f"{len(entry.rejected_files)} file(s) of the series were rejected"
        raise SeriesIncompleteError(entry.first_path, f"series is incomplete and not loaded: {reason}")
    return load_files(index.root, [instance.path for instance in entry.instances], entry.uid, options, tolerance_mm)


def load_files(
    root: Path,
    relative_paths: list[str],
    series_uid: str,
    options: ReadOptions | None = None,
    tolerance_mm: float = 0.01,
) -> SeriesVolume:
    """Decode the files of one series and stack their frames along the slice normal.

    An empty `series_uid` accepts any one series; files of several series are rejected.
    """
    options = options or ReadOptions()
    decoded: list[DecodedInstance] = []
    for relative in sorted(relative_paths):
        try:
            decoded.append(read_instance(root, relative, options))
        except IngestionError as exc:
            raise SeriesIncompleteError(relative, f"series is incomplete: {exc.reason}") from exc

    found_series = {str(instance.dataset.get("SeriesInstanceUID", "")) for instance in decoded}
    if len(found_series) > 1:
        raise SeriesIncompleteError(
            decoded[0].path, f"files belong to {len(found_series)} series; series are never merged"
        )
    if series_uid and found_series != {series_uid}:
        raise SeriesIncompleteError(decoded[0].path, "files do not belong to the requested series")

    frames: list[Frame] = []
    geometry_sources: Counter[str] = Counter()
    for instance in decoded:
        source, instance_frames = instance_frames_with_geometry(instance, options)
        geometry_sources[source] += 1
        frames.extend(instance_frames)

    values, spacing, affine = stack_frames(frames, tolerance_mm, options)
    provenance = _provenance(decoded, geometry_sources)
    logger.debug("loaded series from %d file(s) as %s", len(decoded), values.shape)
    return SeriesVolume(series_uid, values, spacing, affine, [instance.path for instance in decoded], provenance)


def _provenance(decoded: list[DecodedInstance], geometry_sources: Counter[str]) -> dict[str, object]:
    counts: Counter[str] = Counter()
    for instance in decoded:
        for key in ("monochrome1_inverted", "rescale_default", "transfer_syntax_inferred", "modality_lut"):
            if key in instance.notes:
                counts[key] += 1
    return {
        "files": len(decoded),
        "transfer_syntaxes": sorted({str(instance.notes["transfer_syntax"]) for instance in decoded}),
        "geometry_source": dict(geometry_sources),
        **{f"files_{key}": count for key, count in counts.items()},
    }


def instance_frames_with_geometry(instance: DecodedInstance, options: ReadOptions) -> tuple[str, list[Frame]]:
    """Split a decoded file into frames with their geometry; return the geometry source and the frames."""
    ds = instance.dataset
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return "functional groups", _enhanced_frames(instance)
    if instance.values.shape[0] > 1 and "GridFrameOffsetVector" in ds and "ImagePositionPatient" in ds:
        return "GridFrameOffsetVector", _offset_frames(instance)

    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    spacing = pixel_spacing(ds)
    thickness = _float_or_none(ds.get("SliceThickness"))
    if position is not None and orientation is not None and spacing is not None and instance.values.shape[0] == 1:
        frame = Frame(instance.values[0], instance.path, np.array(position, float), np.array(orientation, float),
                      spacing, thickness)
        return "ImagePositionPatient", [frame]

    if options.require_geometry:
        missing = [name for name, value in (("ImagePositionPatient", position), ("ImageOrientationPatient", orientation),
                                            ("PixelSpacing", spacing)) if value is None]
        reason = f"missing {missing}" if missing else "multi-frame image without per-frame positions"
        raise MissingGeometryError(instance.path, f"{reason}; geometry is required (require_geometry)")
    imager_spacing = ds.get("ImagerPixelSpacing")
    if spacing is None and imager_spacing is not None and len(imager_spacing) == 2:
        spacing = (float(imager_spacing[0]), float(imager_spacing[1]))
    frames = [Frame(values, instance.path, None, None, spacing, thickness) for values in instance.values]
    return "absent (pixel units, stored frame order)", frames


def _float_or_none(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _group_item(ds: Dataset, frame: int, macro: str) -> Dataset | None:
    """Return the first item of `macro` for `frame`, from the per-frame group or else the shared one."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) > frame and per_frame[frame].get(macro):
        return per_frame[frame].get(macro)[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get(macro):
        return shared[0].get(macro)[0]
    return None


def _enhanced_frames(instance: DecodedInstance) -> list[Frame]:
    ds = instance.dataset
    frames = []
    for number, values in enumerate(instance.values):
        position_item = _group_item(ds, number, "PlanePositionSequence")
        orientation_item = _group_item(ds, number, "PlaneOrientationSequence")
        measures_item = _group_item(ds, number, "PixelMeasuresSequence")
        missing = []
        if position_item is None or "ImagePositionPatient" not in position_item:
            missing.append("PlanePositionSequence.ImagePositionPatient")
        if orientation_item is None or "ImageOrientationPatient" not in orientation_item:
            missing.append("PlaneOrientationSequence.ImageOrientationPatient")
        if measures_item is None or "PixelSpacing" not in measures_item:
            missing.append("PixelMeasuresSequence.PixelSpacing")
        if missing:
            raise MissingGeometryError(
                instance.path, f"frame {number + 1}: functional groups lack {missing}; "
                "an enhanced image is never given an identity geometry"
            )
        spacing = (float(measures_item.PixelSpacing[0]), float(measures_item.PixelSpacing[1]))  # type: ignore[union-attr]
        frames.append(
            Frame(values, instance.path, np.array(position_item.ImagePositionPatient, float),  # type: ignore[union-attr]
                  np.array(orientation_item.ImageOrientationPatient, float),  # type: ignore[union-attr]
                  spacing, _float_or_none(measures_item.get("SliceThickness")))  # type: ignore[union-attr]
        )
    return frames


def _offset_frames(instance: DecodedInstance) -> list[Frame]:
    """Place the frames of a multi-frame image (such as RT Dose) by GridFrameOffsetVector along the normal."""
    ds = instance.dataset
    orientation = ds.get("ImageOrientationPatient")
    spacing = pixel_spacing(ds)
    offsets = [float(offset) for offset in ds.GridFrameOffsetVector]
    if orientation is None or spacing is None or len(offsets) != instance.values.shape[0]:
        raise MissingGeometryError(
            instance.path, "GridFrameOffsetVector needs ImageOrientationPatient, PixelSpacing and one offset per frame"
        )
    orientation = np.array(orientation, float)
    normal = np.cross(orientation[:3], orientation[3:])
    origin = np.array(ds.ImagePositionPatient, float)
    return [
        Frame(values, instance.path, origin + offset * normal, orientation, spacing, None)
        for values, offset in zip(instance.values, offsets, strict=True)
    ]


def stack_frames(
    frames: list[Frame], tolerance_mm: float, options: ReadOptions
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray]:
    """Sort frames along the slice normal, check the stack is regular and build the affine."""
    first = frames[0]
    shapes = {frame.values.shape for frame in frames}
    if len(shapes) > 1:
        raise SeriesIncompleteError(first.path, f"slices differ in Rows and Columns ({len(shapes)} sizes)")
    spacings = {frame.spacing for frame in frames}
    if len(spacings) > 1:
        raise SeriesIncompleteError(first.path, "slices differ in PixelSpacing")
    row_spacing, column_spacing = first.spacing or (1.0, 1.0)

    if first.position is None:
        values = np.stack([frame.values for frame in frames])
        affine = np.diag([column_spacing, row_spacing, 1.0, 1.0])
        return values, (1.0, row_spacing, column_spacing), affine

    orientation = first.orientation
    assert orientation is not None
    for frame in frames:
        if frame.orientation is None or np.abs(frame.orientation - orientation).max() > ORIENTATION_TOLERANCE:
            raise SeriesIncompleteError(frame.path, "slices differ in ImageOrientationPatient")
    row_direction, column_direction = orientation[:3], orientation[3:]
    normal = np.cross(row_direction, column_direction)

    distances = np.array([float(frame.position @ normal) for frame in frames])  # type: ignore[operator]
    order = np.argsort(distances, kind="stable")
    ordered = [frames[i] for i in order]
    gaps = np.diff(distances[order])
    if len(gaps):
        if gaps.min() <= tolerance_mm:
            duplicate = ordered[int(np.argmin(gaps)) + 1]
            raise SeriesIncompleteError(duplicate.path, "two slices share one position along the slice normal")
        slice_spacing = float(np.median(gaps))
        if np.abs(gaps - slice_spacing).max() > tolerance_mm:
            raise SeriesIncompleteError(
                first.path, f"slice gaps vary by more than the spacing tolerance of {tolerance_mm} mm"
            )
    elif first.thickness is not None:
        slice_spacing = first.thickness
    elif options.require_geometry:
        raise MissingGeometryError(first.path, "single slice without SliceThickness; slice spacing unknown")
    else:
        slice_spacing = 1.0

    affine = np.eye(4)
    affine[:3, 0] = row_direction * column_spacing
    affine[:3, 1] = column_direction * row_spacing
    affine[:3, 2] = normal * slice_spacing
    affine[:3, 3] = ordered[0].position  # type: ignore[assignment]
    values = np.stack([frame.values for frame in ordered])
    return values, (slice_spacing, row_spacing, column_spacing), affine


def load_all_series(
    index: DicomIndex, options: ReadOptions | None = None, tolerance_mm: float = 0.01
) -> list[SeriesVolume]:
    """Load every complete series of an index as its own volume; series are never merged."""
    return [load_series(index, entry.uid, options, tolerance_mm) for entry in index.usable_series()]
