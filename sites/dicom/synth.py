"""Write reproducible multi-site synthetic CT studies as real DICOM files.

Each study is one axial CT series of a phantom: air around an elliptic body
of soft tissue (40 HU) with Gaussian noise, and in about half of the studies
one spherical lesion (80 HU) centred on the middle slice. Each series has a
label (lesion present) and a mask in the site's `labels.csv`. Sites differ
the way hospitals do: scanner vendor tags and private blocks, pixel spacing,
slice thickness, rescale slope and intercept, and signed or unsigned storage.
One site stores MONOCHROME1 with every InstanceNumber 1, and another
compresses with RLE Lossless.

The same configuration and seed write byte-identical files: every UID comes
from `generate_uid` with fixed entropy sources and no timestamps are written.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

logger = logging.getLogger(__name__)

AIR_HU = -1000.0
TISSUE_HU = 40.0
LESION_HU = 80.0
NOISE_HU = 20.0
BODY_SEMI_AXES_MM = (12.0, 9.5)  # fits the smallest field of view below (64 x 0.5 mm)
LESION_RADIUS_MM = (2.0, 3.5)


class SiteProfile(BaseModel):
    """Scanner settings of one synthetic hospital."""

    model_config = ConfigDict(extra="forbid")

    name: str
    manufacturer: str
    model_name: str
    private_creator: str
    pixel_spacing_mm: float
    slice_thickness_mm: float
    rescale_slope: float = 1.0
    rescale_intercept: float = -1024.0
    signed: bool = False  # PixelRepresentation 1 (two's complement)
    photometric: Literal["MONOCHROME1", "MONOCHROME2"] = "MONOCHROME2"
    transfer_syntax: str = ExplicitVRLittleEndian
    constant_instance_number: bool = False  # every slice has InstanceNumber 1


DEFAULT_SITES: tuple[SiteProfile, ...] = (
    SiteProfile(name="site_a", manufacturer="GE MEDICAL SYSTEMS", model_name="Synthetic CT 64",
                private_creator="GEMS_IDEN_01", pixel_spacing_mm=0.7, slice_thickness_mm=2.5),
    SiteProfile(name="site_b", manufacturer="SIEMENS", model_name="Synthetic Definition",
                private_creator="SIEMENS CT VA0  COAD", pixel_spacing_mm=0.9, slice_thickness_mm=3.0,
                rescale_slope=0.5, rescale_intercept=-1024.0, photometric="MONOCHROME1",
                transfer_syntax=ImplicitVRLittleEndian, constant_instance_number=True),
    SiteProfile(name="site_c", manufacturer="Philips", model_name="Synthetic Brilliance",
                private_creator="Philips Imaging DD 001", pixel_spacing_mm=0.5, slice_thickness_mm=2.0,
                rescale_intercept=0.0, signed=True, transfer_syntax=RLELossless),
)


class SynthConfig(BaseModel):
    """Size and seed of a synthetic multi-site CT data set."""

    model_config = ConfigDict(extra="forbid")

    studies_per_site: int = Field(default=40, ge=1, description="Studies (one series each) per site.")
    slices: int = Field(default=3, ge=1, description="Slices per series.")
    size: int = Field(default=64, ge=16, le=512, description="Rows and columns of each image.")
    lesion_fraction: float = Field(default=0.5, ge=0, le=1, description="Share of studies with a lesion.")
    seed: int = Field(default=0, description="Seed of the images, labels and UIDs.")
    sites: list[SiteProfile] = Field(default_factory=lambda: list(DEFAULT_SITES))


def write_sites(
    out: Path, config: SynthConfig, on_study: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Write every site's studies under `out/<site>/` and return the number of files per site.

    Each site folder is a data root: `dicom/` with one folder per study,
    `masks/` with one .npy mask per lesion-positive series and `labels.csv`.
    """
    counts: dict[str, int] = {}
    for site_number, profile in enumerate(config.sites):
        rng = np.random.default_rng([config.seed, site_number])
        site_root = out / profile.name
        (site_root / "dicom").mkdir(parents=True, exist_ok=True)
        (site_root / "masks").mkdir(parents=True, exist_ok=True)
        rows = []
        for study in range(config.studies_per_site):
            label, series_uid, mask = _write_study(site_root, profile, config, site_number, study, rng)
            mask_path = ""
            if mask is not None:
                mask_path = f"masks/study_{study:04d}.npy"
                np.save(site_root / mask_path, mask, allow_pickle=False)
            rows.append({"series_uid": series_uid, "label": label, "mask": mask_path})
            if on_study is not None:
                on_study(profile.name, study)
        with (site_root / "labels.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["series_uid", "label", "mask"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        counts[profile.name] = config.studies_per_site * config.slices
        logger.info("%s: wrote %d studies, %d files", profile.name, config.studies_per_site, counts[profile.name])
    return counts


def _uid(config: SynthConfig, *parts: object) -> str:
    return generate_uid(entropy_srcs=[str(config.seed), *map(str, parts)])


def _write_study(
    site_root: Path, profile: SiteProfile, config: SynthConfig, site_number: int, study: int,
    rng: np.random.Generator,
) -> tuple[int, str, np.ndarray | None]:
    """Write one study's series and return (label, SeriesInstanceUID, mask or None)."""
    label = int(rng.random() < config.lesion_fraction)
    hu, mask = render_phantom(config.size, config.slices, profile, label, rng)
    study_uid = _uid(config, profile.name, study, "study")
    series_uid = _uid(config, profile.name, study, "series")
    folder = site_root / "dicom" / f"study_{study:04d}"
    folder.mkdir(parents=True, exist_ok=True)

    # Files are named after the SOPInstanceUID's last component, which carries no slice order.
    for slice_index in rng.permutation(config.slices):
        sop_uid = _uid(config, profile.name, study, "instance", slice_index)
        ds = _slice_dataset(profile, config, hu[slice_index], int(slice_index), study, study_uid, series_uid, sop_uid)
        ds.save_as(folder / f"{sop_uid.rsplit('.', 1)[-1]}.dcm", enforce_file_format=True)
    return label, series_uid, (mask if label else None)


def render_phantom(
    size: int, slices: int, profile: SiteProfile, label: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return (HU, mask) arrays of shape (slices, size, size), slice 0 lowest along the normal."""
    spacing = profile.pixel_spacing_mm
    centre = (size - 1) / 2
    row_mm, column_mm = np.meshgrid((np.arange(size) - centre) * spacing, (np.arange(size) - centre) * spacing,
                                    indexing="ij")
    body = (column_mm / BODY_SEMI_AXES_MM[0]) ** 2 + (row_mm / BODY_SEMI_AXES_MM[1]) ** 2 <= 1.0
    hu = np.where(body, TISSUE_HU, AIR_HU)[None].repeat(slices, axis=0)
    hu = hu + rng.normal(0.0, NOISE_HU, size=hu.shape)
    mask = np.zeros(hu.shape, dtype=np.uint8)

    radius = rng.uniform(*LESION_RADIUS_MM)
    angle = rng.uniform(0, 2 * np.pi)
    reach = rng.uniform(0, 0.55)
    lesion_column = np.cos(angle) * reach * BODY_SEMI_AXES_MM[0]
    lesion_row = np.sin(angle) * reach * BODY_SEMI_AXES_MM[1]
    if label:
        middle = (slices - 1) / 2
        for k in range(slices):
            depth = (k - middle) * profile.slice_thickness_mm
            inside = (row_mm - lesion_row) ** 2 + (column_mm - lesion_column) ** 2 + depth**2 <= radius**2
            mask[k] = inside & body
            hu[k][mask[k].astype(bool)] = LESION_HU + rng.normal(0.0, NOISE_HU, size=int(mask[k].sum()))
    return hu, mask


def stored_values(hu: np.ndarray, profile: SiteProfile) -> np.ndarray:
    """Invert the modality LUT (and MONOCHROME1) to the integers a scanner would store."""
    stored = np.rint((hu - profile.rescale_intercept) / profile.rescale_slope)
    bits = 12 if not profile.signed else 16
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if profile.signed else (0, (1 << bits) - 1)
    stored = np.clip(stored, low, high)
    if profile.photometric == "MONOCHROME1":
        stored = (low + high) - stored
    return stored.astype(np.int16 if profile.signed else np.uint16)


def _slice_dataset(
    profile: SiteProfile, config: SynthConfig, hu: np.ndarray, slice_index: int, study: int,
    study_uid: str, series_uid: str, sop_uid: str,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if profile.transfer_syntax == RLELossless else profile.transfer_syntax

    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = _uid(config, profile.name, study, "frame")
    ds.Modality = "CT"
    ds.Manufacturer = profile.manufacturer
    ds.ManufacturerModelName = profile.model_name
    ds.PatientName = ""
    ds.PatientID = f"{profile.name.upper()}-{study:04d}"  # pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "synthetic data, no patient"
    ds.StudyID = str(study)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1 if profile.constant_instance_number else slice_index + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BurnedInAnnotation = "NO"

    spacing = profile.pixel_spacing_mm
    size = config.size
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    corner = -(size - 1) / 2 * spacing
    ds.ImagePositionPatient = [round(corner, 4), round(corner, 4), round(slice_index * profile.slice_thickness_mm, 4)]
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = profile.slice_thickness_mm
    ds.RescaleSlope = profile.rescale_slope
    ds.RescaleIntercept = profile.rescale_intercept
    ds.RescaleType = "HU"

    stored = stored_values(hu, profile)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = profile.photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if profile.signed else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if profile.signed else 0

    block = ds.private_block(0x0009, profile.private_creator, create=True)
    block.add_new(0x01, "LO", "synthetic")
    if profile.transfer_syntax == RLELossless:
        ds.compress(RLELossless, stored, encoding_plugin="pydicom")
    else:
        ds.PixelData = stored.tobytes()
    return ds
