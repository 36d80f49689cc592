"""Decode one DICOM file into modality values (for CT: Hounsfield units) as MONOCHROME2.

Per file, in this order: the Part-10 header check, the decoder check, the
pixel byte count, decoding, MONOCHROME1 inversion and the modality LUT
(rescale slope and intercept, per frame for enhanced images). In tolerant
mode a consistent header-less file is read with an inferred transfer syntax. Each step
that rejects a file raises an IngestionError naming the file by its path
relative to the data root, the tag keyword and the rule, never a value from
the file. Decoded values may of course be patient data: they stay on site.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut

from medfed.data_contracts.dicom import MissingRescale
from medfed.sites.dicom.codecs import decoder_gap
from medfed.sites.dicom.headers import expected_pixel_bytes, inferred_transfer_syntax, quiet_validation

logger = logging.getLogger(__name__)

CT_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage and its enhanced forms
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")


class IngestionError(ValueError):
    """A file or series that cannot be turned into tensors, and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class HeaderlessRejectedError(IngestionError):
    """A file without the Part-10 header, in strict mode or inconsistent in tolerant mode."""


class DecoderMissingError(IngestionError):
    """A compressed file whose transfer syntax no installed package decodes."""

    def __init__(self, path: str, transfer_syntax: str, reason: str) -> None:
        super().__init__(path, reason)
        self.transfer_syntax = transfer_syntax


class TruncatedPixelDataError(IngestionError):
    """Pixel data shorter than the image attributes require."""

    def __init__(self, path: str, expected: int, found: int) -> None:
        super().__init__(
            path, f"PixelData is truncated: expected {expected} bytes from Rows, Columns, "
            f"NumberOfFrames, SamplesPerPixel and BitsAllocated, found {found}"
        )
        self.expected = expected
        self.found = found


class MissingRescaleError(IngestionError):
    """A CT image without RescaleSlope or RescaleIntercept under the contract's `error` rule."""


class MissingGeometryError(IngestionError):
    """An image whose position, orientation or spacing is missing."""


class UnsupportedImageError(IngestionError):
    """An image that medfed does not turn into tensors, such as colour images."""


class ReadOptions(BaseModel):
    """Reading options: the site sets strictness, the contract sets the rescale rule."""

    model_config = ConfigDict(extra="forbid")

    tolerant_headerless: bool = Field(
        default=False,
        description="Read files without the Part-10 header when their elements and pixel length are consistent.",
    )
    ct_missing_rescale: MissingRescale = MissingRescale.ERROR
    require_geometry: bool = Field(
        default=True,
        description="Reject images without position, orientation and pixel spacing instead of using pixel units.",
    )


@dataclass
class DecodedInstance:
    """Values of one file as (frames, rows, columns) float32 MONOCHROME2 modality values."""

    path: str
    dataset: Dataset
    values: np.ndarray
    notes: dict[str, object] = field(default_factory=dict)  # provenance: what was inferred or defaulted


def read_instance(root: Path, relative: str, options: ReadOptions) -> DecodedInstance:
    """Read, check and decode the file `root / relative`; raise an IngestionError when it is rejected."""
    notes: dict[str, object] = {}
    with quiet_validation():
        ds = _read_dataset(root / relative, relative, options, notes)
        transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
        gap = decoder_gap(transfer_syntax)
        if gap is not None:
            raise DecoderMissingError(relative, transfer_syntax, gap.message())
        _check_image_attributes(ds, relative)
        _check_pixel_length(ds, relative, compressed=ds.file_meta.TransferSyntaxUID.is_compressed)
        stored = _decode(ds, relative)

    values = stored.astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        values = _invert_monochrome1(values, ds)
        notes["monochrome1_inverted"] = True
    values = _apply_modality_lut(values, stored, ds, relative, options, notes)
    notes["transfer_syntax"] = transfer_syntax
    return DecodedInstance(path=relative, dataset=ds, values=values.astype(np.float32), notes=notes)


def _read_dataset(path: Path, relative: str, options: ReadOptions, notes: dict[str, object]) -> Dataset:
    with path.open("rb") as handle:
        handle.seek(128)
        part10 = handle.read(4) == b"DICM"
    if part10:
        try:
            return dcmread(path)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
            raise IngestionError(relative, f"file could not be read as DICOM ({type(exc).__name__})") from None

    if not options.tolerant_headerless:
        raise HeaderlessRejectedError(
            relative, "file has no Part-10 preamble and file meta; strict mode rejects it "
            "(enable tolerant_headerless to infer the transfer syntax)"
        )
    try:
        ds = dcmread(path, force=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure means the file is inconsistent
        raise HeaderlessRejectedError(relative, f"header-less file could not be parsed ({type(exc).__name__})") from None

    missing = [keyword for keyword in ("Rows", "Columns", "BitsAllocated", "PixelData") if keyword not in ds]
    if missing:
        raise HeaderlessRejectedError(relative, f"header-less file lacks {missing}; not read")
    expected = expected_pixel_bytes(ds)
    found = len(ds.PixelData)
    if found not in (expected, expected + 1):
        raise HeaderlessRejectedError(
            relative, f"header-less file is inconsistent: PixelData has {found} bytes, "
            f"its image attributes require {expected}"
        )

    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = inferred_transfer_syntax(ds)
    notes["transfer_syntax_inferred"] = True
    logger.warning("%s: no Part-10 header; read with an inferred transfer syntax (tolerant mode)", relative)
    return ds


def _check_image_attributes(ds: Dataset, relative: str) -> None:
    missing = [keyword for keyword in ("Rows", "Columns", "BitsAllocated", "PixelData") if keyword not in ds]
    if "SOPClassUID" not in ds and "SOPInstanceUID" not in ds:
        raise IngestionError(relative, "no data set could be read after the file meta; the file is truncated or corrupt")
    if missing:
        raise UnsupportedImageError(relative, f"missing {missing}; not an image")
    photometric = ds.get("PhotometricInterpretation")
    if photometric not in GRAYSCALE or int(ds.get("SamplesPerPixel") or 1) != 1:
        raise UnsupportedImageError(
            relative, f"PhotometricInterpretation {photometric} with SamplesPerPixel "
            f"{ds.get('SamplesPerPixel')} is not supported; only MONOCHROME1 and MONOCHROME2 are"
        )


def _check_pixel_length(ds: Dataset, relative: str, *, compressed: bool) -> None:
    if compressed:
        return  # encapsulated frames are checked by the decoder
    expected = expected_pixel_bytes(ds)
    found = len(ds.PixelData)
    if found < expected:
        raise TruncatedPixelDataError(relative, expected, found)


def _decode(ds: Dataset, relative: str) -> np.ndarray:
    try:
        stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; the file is rejected either way
        raise IngestionError(relative, f"pixel data could not be decoded ({type(exc).__name__})") from None
    frames = int(ds.get("NumberOfFrames") or 1)
    return stored.reshape(frames, int(ds.Rows), int(ds.Columns))


def stored_value_range(ds: Dataset) -> tuple[int, int]:
    """Return the smallest and largest stored value that BitsStored and PixelRepresentation allow."""
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _invert_monochrome1(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Map MONOCHROME1 to MONOCHROME2 by reflecting stored values over their full range.

    The modality LUT is linear, so reflecting stored values before it equals
    reflecting the modality values over the rescaled range after it.
    """
    low, high = stored_value_range(ds)
    return (low + high) - values


def is_ct(ds: Dataset) -> bool:
    return ds.get("Modality") == "CT" or str(ds.get("SOPClassUID", "")).startswith(CT_SOP_CLASS_PREFIX)


def _apply_modality_lut(
    values: np.ndarray,
    stored: np.ndarray,
    ds: Dataset,
    relative: str,
    options: ReadOptions,
    notes: dict[str, object],
) -> np.ndarray:
    """Apply RescaleSlope and RescaleIntercept (per frame for enhanced images) or the Modality LUT."""
    if "ModalityLUTSequence" in ds:
        if ds.PhotometricInterpretation == "MONOCHROME1":
            raise UnsupportedImageError(relative, "MONOCHROME1 with a ModalityLUTSequence is not supported")
        notes["modality_lut"] = "ModalityLUTSequence"
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)

    rescales = [_frame_rescale(ds, frame) for frame in range(values.shape[0])]
    if any(rescale is None for rescale in rescales):
        if is_ct(ds) and options.ct_missing_rescale == MissingRescale.ERROR:
            raise MissingRescaleError(
                relative, "CT image without RescaleSlope or RescaleIntercept; the contract rule "
                "ct_missing_rescale is 'error' (set it to 'identity' to use slope 1 and intercept 0)"
            )
        notes["rescale_default"] = "slope 1, intercept 0"
        rescales = [rescale or (1.0, 0.0) for rescale in rescales]
    slopes = np.array([rescale[0] for rescale in rescales])[:, None, None]  # type: ignore[index]
    intercepts = np.array([rescale[1] for rescale in rescales])[:, None, None]  # type: ignore[index]
    return values * slopes + intercepts


def _frame_rescale(ds: Dataset, frame: int) -> tuple[float, float] | None:
    """Return (slope, intercept) of one frame, from its functional group, the shared one or the top level."""
    for groups_keyword, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(groups_keyword)
        if groups and len(groups) > index:
            transform = groups[index].get("PixelValueTransformationSequence")
            if transform:
                item = transform[0]
                if "RescaleSlope" in item and "RescaleIntercept" in item:
                    return float(item.RescaleSlope), float(item.RescaleIntercept)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        return float(ds.RescaleSlope), float(ds.RescaleIntercept)
    return None
