"""A site's DICOM data as a `SiteDataset`: contract check, labels, MONAI preprocessing, the split.

`open_dicom` indexes the dataset's folder against its DICOM contract,
attaches the label manifest and loads every labelled complete series. The
middle slice of each series (along the slice normal) becomes a 2D image
through ordinary MONAI transforms: HU window to [0, 1], optional
resampling to a common pixel spacing, then padding or cropping to a fixed
size. The images
stay in memory; they are small by design (one slice per series).

`medfed.sites.datasets.DATASET_KINDS` lists this module's `open_dicom` as
the kind "dicom" and imports the module only when a site opens such a
dataset, because it imports MONAI, which costs seconds.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.data import MetaTensor
from PIL import Image
from monai.transforms import Compose, ResizeWithPadOrCropd, ScaleIntensityRanged, Spacingd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sklearn.model_selection import train_test_split

from medfed.data_contracts.dicom import load_dicom_contract
from medfed.data_contracts.report import ContractReport, RuleResult
from medfed.data_contracts.tabular import ContractViolation, Policy
from medfed.sites.config import SiteConfig
from medfed.sites.datasets import DataSpec
from medfed.sites.dicom.index import scan_folder
from medfed.sites.dicom.labels import LabelledSeries, LabelManifestError, attach_labels
from medfed.sites.dicom.pixels import ReadOptions
from medfed.sites.dicom.reader import MedfedDicomReader
from medfed.sites.dicom.volume import SeriesVolume, load_series

logger = logging.getLogger(__name__)

# Sample images form one PNG row; more than this would only make the preview unreadable.
MAX_SAMPLE_IMAGES = 16


class DicomDataOptions(BaseModel):
    """Options of the "dicom" data kind, sent by the centre in `DataSpec.options`."""

    model_config = ConfigDict(extra="forbid")

    task: Literal["classification", "segmentation"] = "classification"
    image_size: int = Field(default=64, ge=8, le=1024, description="Output rows and columns, in pixels.")
    window_hu: tuple[float, float] = Field(
        default=(-200.0, 300.0), description="Modality values mapped to 0 and 1 (HU for CT), clipped."
    )
    target_spacing_mm: float | None = Field(
        default=0.7, gt=0, description="Resample rows and columns to this spacing; None keeps each site's."
    )
    sample_images: int = Field(
        default=8, ge=0, le=MAX_SAMPLE_IMAGES,
        description=(
            "Test images a site sends as one PNG for the MLflow run; 0 sends none. Only a site whose "
            "dataset is declared synthetic sends any."
        ),
    )

    @model_validator(mode="after")
    def _check_window(self) -> DicomDataOptions:
        if self.window_hu[0] >= self.window_hu[1]:
            raise ValueError(f"window_hu {list(self.window_hu)} must have min < max")
        return self


class DicomDataset:
    """A site's labelled DICOM series as 2D tensors, split once per (seed, fraction)."""

    def __init__(
        self, site_id: str, images: torch.Tensor, targets: torch.Tensor, labels: np.ndarray,
        shareable: list[bool], report: ContractReport, spec: DataSpec, *, synthetic: bool = False,
    ) -> None:
        self.site_id = site_id
        self.report = report
        self.spec = spec
        self.synthetic = synthetic
        self.options = DicomDataOptions.model_validate(spec.options)
        train_rows, test_rows = _split(labels, spec.test_fraction, spec.split_seed)
        self.train_x, self.train_y = images[train_rows], targets[train_rows]
        self.test_x, self.test_y = images[test_rows], targets[test_rows]
        self.num_train = len(train_rows)
        self.num_test = len(test_rows)
        # Per test row: whether images derived from it may leave the site (no burned-in text risk).
        self.test_shareable = [shareable[row] for row in test_rows]

    def statistics(self, min_count: int) -> None:
        """Return None: the HU window and spacing are fixed, so no federated statistics are needed."""
        return None

    def prepare(self, plan: object | None) -> None:
        """Accept and ignore a preprocessing plan; images are preprocessed when the dataset opens."""

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.num_train == 0:
            return
        while True:
            order = torch.randperm(self.num_train, generator=generator)
            for start in range(0, self.num_train, batch_size):
                index = order[start : start + batch_size]
                if len(index) == 1 < self.num_train:
                    # Skip a trailing batch of one image: a BatchNorm layer (DenseNet121) whose
                    # input is reduced to 1 x 1 pixels cannot train on one value per channel.
                    continue
                yield self.train_x[index], self.train_y[index]

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, self.num_test, batch_size):
            yield self.test_x[start : start + batch_size], self.test_y[start : start + batch_size]

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the training images and targets (for the pooled research baseline)."""
        return self.train_x, self.train_y

    def sample_png(self) -> bytes | None:
        """Return the first `sample_images` shareable test images as one grey-scale PNG row, or None.

        Returns None unless the site config declares the dataset synthetic.
        Test images of a series flagged for burned-in text are never included.
        """
        count = self.options.sample_images
        if count == 0:
            return None
        if not self.synthetic:
            logger.info("site %s: no sample images sent, because the dataset is not declared synthetic",
                        self.site_id)
            return None
        rows = [row for row, shareable in enumerate(self.test_shareable) if shareable][:count]
        if not rows:
            logger.info("site %s: no sample images sent, because no test series may leave the site", self.site_id)
            return None
        return image_row_png(self.test_x[rows])


def image_row_png(images: torch.Tensor) -> bytes:
    """Encode (count, 1, rows, columns) images with values in [0, 1] as one 8-bit PNG, side by side."""
    pixels = (images[:, 0].clamp(0, 1) * 255).round().to(torch.uint8)
    gap = torch.zeros((pixels.shape[1], 2), dtype=torch.uint8)
    tiles = [tile for image in pixels for tile in (image, gap)][:-1]
    buffer = io.BytesIO()
    Image.fromarray(torch.cat(tiles, dim=1).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def _split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    rows = list(range(len(labels)))
    counts = np.bincount(labels, minlength=2)
    stratify = labels if counts.min() >= 2 else None
    train, test = train_test_split(rows, test_size=test_fraction, random_state=seed, stratify=stratify)
    return sorted(train), sorted(test)


def preprocessing(options: DicomDataOptions, with_mask: bool) -> Compose:
    """Build the MONAI transforms applied to each series' (channel, column, row, slice) image and mask."""
    keys = ["image", "mask"] if with_mask else ["image"]
    low, high = options.window_hu
    transforms: list[object] = [ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0,
                                                     clip=True)]
    if options.target_spacing_mm is not None:
        spacing = (options.target_spacing_mm, options.target_spacing_mm, -1.0)  # keep the slice spacing
        modes = ("bilinear", "nearest") if with_mask else ("bilinear",)
        transforms.append(Spacingd(keys=keys, pixdim=spacing, mode=modes))
    transforms.append(ResizeWithPadOrCropd(keys=keys, spatial_size=(options.image_size, options.image_size, -1)))
    return Compose(transforms)


def series_tensors(
    volume: SeriesVolume, item: LabelledSeries, root: Path, options: DicomDataOptions, transforms: Compose
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return a loaded series' middle slice as (1, rows, columns) and its target.

    The target is the label for classification, or the middle slice of the
    mask, as (1, rows, columns) of 0 and 1, for segmentation.
    """
    array, meta = MedfedDicomReader().get_data(volume)
    sample = {"image": MetaTensor(array[None], meta=dict(meta))}
    with_mask = options.task == "segmentation"
    if with_mask:
        mask = series_mask(volume, item, root).transpose(2, 1, 0)[None].astype(np.float32)
        sample["mask"] = MetaTensor(mask, meta=dict(meta))
    sample = transforms(sample)

    middle = sample["image"].shape[-1] // 2
    # (channel, column, row) back to (channel, row, column), the layout of the DICOM pixel matrix.
    image = sample["image"].as_tensor()[..., middle].transpose(-1, -2).float()
    if with_mask:
        target = (sample["mask"].as_tensor()[..., middle].transpose(-1, -2) > 0.5).float()
    else:
        target = torch.tensor(float(item.label))
    return image.contiguous(), target


def series_mask(volume: SeriesVolume, item: LabelledSeries, root: Path) -> np.ndarray:
    """Return the series' mask as (slices, rows, columns); a negative series without a mask file is empty."""
    if item.mask_path is None:
        if item.label == 0:
            return np.zeros(volume.values.shape, dtype=np.uint8)
        raise LabelManifestError(f"series of {item.entry.first_path} is labelled positive but has no mask")
    mask = item.load_mask(root)
    if mask.shape != volume.values.shape:
        raise LabelManifestError(
            f"mask {item.mask_path} has shape {mask.shape} but its series has shape {volume.values.shape}"
        )
    return mask


def open_dicom(site: SiteConfig, spec: DataSpec) -> DicomDataset:
    """Validate the site's DICOM folder and label manifest against the contract, load and split them."""
    binding = site.dataset(spec.dataset)
    options = DicomDataOptions.model_validate(spec.options)
    contract = load_dicom_contract(binding.contract)
    site.dataset_path(spec.dataset)  # rejects a path that leaves data_root
    root = site.data_root.resolve()

    index = scan_folder(root, contract, subfolder=binding.path)
    if not index.report.ok and site.policy == Policy.REFUSE:
        raise ContractViolation(index.report)
    items = attach_labels(index, contract, policy=site.policy)
    if len(items) < contract.min_series:
        raise ContractViolation(index.report.model_copy(update={"results": index.report.results + [
            RuleResult(rule="min_series", passed=False, count=1,
                       detail=f"at least {contract.min_series} labelled complete series required, {len(items)} found")
        ]}))

    read_options = ReadOptions(ct_missing_rescale=contract.ingestion.ct_missing_rescale)
    transforms = preprocessing(options, with_mask=options.task == "segmentation")
    images, targets = [], []
    for item in items:
        volume = load_series(index, item.entry.uid, read_options, contract.geometry.spacing_tolerance_mm)
        image, target = series_tensors(volume, item, root, options, transforms)
        images.append(image)
        targets.append(target)

    labels = np.array([item.label for item in items], dtype=int)
    logger.info(
        "site %s: %s validated (%d series, %d positive, fingerprint %s)",
        site.site_id, index.report.source, len(items), int(labels.sum()), (index.report.fingerprint or "")[:12],
    )
    shareable = [item.entry.may_leave_site for item in items]
    return DicomDataset(site.site_id, torch.stack(images), torch.stack(targets), labels, shareable,
                        index.report, spec, synthetic=binding.synthetic)

