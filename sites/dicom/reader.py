"""A MONAI ImageReader that loads DICOM series through medfed's checked ingestion.

`load_image()` returns a MONAI `LoadImage` that uses only this reader and
lets its errors through. (A plain `LoadImage(reader=MedfedDicomReader())`
falls back to MONAI's own readers when this one raises, and those merge
series.) On a folder it
returns the folder's one series as a MetaTensor in MONAI's usual layout: spatial axes (column, row,
slice), no channel dimension unless `ensure_channel_first`, and the affine in
RAS (or LPS with `affine_lps_to_ras=False`). Everything after loading is
ordinary MONAI. A folder with several series is never merged: pass
`series_uid`, or load each series with `load_all_series`.

This module imports MONAI, which costs seconds; import it only where images
are loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import ImageReader
from monai.data.utils import orientation_ras_lps
from monai.transforms import LoadImage
from monai.utils import MetaKeys, SpaceKeys

from medfed.data_contracts.dicom import DicomContract
from medfed.sites.dicom.index import scan_folder
from medfed.sites.dicom.pixels import IngestionError, ReadOptions
from medfed.sites.dicom.volume import SeriesVolume, load_files, load_series

# Contract used when the caller gives none: every modality, SOP class and
# transfer syntax, grayscale images only.
PERMISSIVE_CONTRACT = DicomContract(name="any_grayscale_dicom", version="0")


class MultipleSeriesError(IngestionError):
    """A folder with more than one series and no series chosen."""


class MedfedDicomReader(ImageReader):
    """Load one DICOM series from a folder, or from a list of files of one series."""

    def __init__(
        self,
        options: ReadOptions | None = None,
        contract: DicomContract | None = None,
        series_uid: str | None = None,
        affine_lps_to_ras: bool = True,
    ) -> None:
        super().__init__()
        self.options = options or ReadOptions()
        self.contract = contract or PERMISSIVE_CONTRACT
        self.series_uid = series_uid
        self.affine_lps_to_ras = affine_lps_to_ras

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return all(Path(name).is_dir() or Path(name).suffix.lower() in {".dcm", ""} for name in names)

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs: object) -> SeriesVolume:
        """Index and load one series from a folder, or from files that belong to one series."""
        paths = [Path(data)] if isinstance(data, (str, Path)) else [Path(item) for item in data]
        if len(paths) == 1 and paths[0].is_dir():
            return self._read_folder(paths[0])
        root = Path(*_common_parts(paths))
        relative = [str(path.resolve().relative_to(root.resolve())) for path in paths]
        return load_files(root, relative, self.series_uid or "", self.options, self.contract.geometry.spacing_tolerance_mm)

    def _read_folder(self, folder: Path) -> SeriesVolume:
        index = scan_folder(folder, self.contract, workers=1, tolerant=self.options.tolerant_headerless)
        tolerance = self.contract.geometry.spacing_tolerance_mm
        if self.series_uid is not None:
            return load_series(index, self.series_uid, self.options, tolerance)
        if len(index.series) != 1:
            raise MultipleSeriesError(
                folder.name, f"folder contains {len(index.series)} series and none was chosen; "
                "series are never merged: pass series_uid or load each with load_all_series"
            )
        return load_series(index, next(iter(index.series)), self.options, tolerance)

    def get_data(self, img: SeriesVolume) -> tuple[np.ndarray, dict]:
        """Return the volume as (column, row, slice) with MONAI's meta keys."""
        array = np.ascontiguousarray(img.values.transpose(2, 1, 0))
        affine = orientation_ras_lps(img.affine.copy()) if self.affine_lps_to_ras else img.affine.copy()
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape),
            MetaKeys.SPACE: SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),  # no channel dimension
            "spacing": np.asarray([img.spacing[2], img.spacing[1], img.spacing[0]]),
            "medfed_provenance": json.dumps(img.provenance, sort_keys=True),
        }
        return array, meta


def _common_parts(paths: list[Path]) -> tuple[str, ...]:
    parents = [path.resolve().parent.parts for path in paths]
    common: list[str] = []
    for parts in zip(*parents):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return tuple(common)


class MedfedLoadImage(LoadImage):
    """LoadImage that always calls its medfed reader directly, so its errors reach the caller unchanged."""

    def __init__(self, reader: MedfedDicomReader, *, ensure_channel_first: bool = True) -> None:
        super().__init__(reader=reader, image_only=True, ensure_channel_first=ensure_channel_first)
        self.readers = [reader]
        self.medfed_reader = reader

    def __call__(self, filename, reader=None):  # type: ignore[no-untyped-def, override]
        return super().__call__(filename, reader=reader or self.medfed_reader)


def load_image(reader: MedfedDicomReader | None = None, *, ensure_channel_first: bool = True) -> LoadImage:
    """Return a MONAI LoadImage that reads only with `reader` and raises its IngestionErrors unchanged."""
    return MedfedLoadImage(reader or MedfedDicomReader(), ensure_channel_first=ensure_channel_first)
