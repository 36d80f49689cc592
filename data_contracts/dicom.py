"""DICOM data contracts: the YAML model, the per-file header rules and the report.

A DICOM contract names the tags every file must carry and the modalities,
SOP classes, transfer syntaxes and photometric interpretations a study
accepts. It also sets geometry ranges, de-identification rules, the
treatment of burned-in text and the label manifest (a CSV checked by a
tabular contract). The rules here look
at one file's header at a time and return rule names, never values, so the
scanner in `medfed.sites.dicom` can run them in worker processes and collect
a `ContractReport` with counts and relative paths only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydicom.datadict import DicomDictionary, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medfed.data_contracts.dicom_values import keyword_tag, number, numbers, text, unsigned_short, values
from medfed.data_contracts.files import read_contract_text
from medfed.data_contracts.report import ContractReport, RuleResult, Severity, capped

# SOP classes whose images often carry burned-in text: ultrasound,
# secondary capture and video photographic images (DICOM PS3.4 annex B).
BURNED_IN_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
    "1.2.840.10008.5.1.4.1.1.77.1.1.1",  # Video Endoscopic Image Storage
    "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video Photographic Image Storage
)
BURNED_IN_MODALITIES: tuple[str, ...] = ("US", "IVUS", "SC", "OT", "XC", "ES", "DOC")
# Public tags whose VR is SQ in pydicom's data dictionary; raw elements of
# implicit VR files carry no VR.
SEQUENCE_TAGS: frozenset[int] = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")
# ImageType values that mark a screen capture or a derived secondary image.
BURNED_IN_IMAGE_TYPES: tuple[str, ...] = ("SCREEN SAVE", "SECONDARY")


class DicomContractError(ValueError):
    """A DICOM contract file that is invalid."""


class MissingRescale(StrEnum):
    """Treatment of a CT image without RescaleIntercept or RescaleSlope."""

    ERROR = "error"  # reject the file
    IDENTITY = "identity"  # use slope 1 and intercept 0 and record it in the provenance


class MultipleSeries(StrEnum):
    """Treatment of a study with more than one series."""

    EACH = "each"  # every series is an item of its own
    REJECT = "reject"  # the study breaks the contract


class BurnedInAction(StrEnum):
    """Treatment of files that may carry burned-in text."""

    EXCLUDE = "exclude"  # left out of training; the files never leave the site
    FLAG = "flag"  # used for training only; never sent anywhere, previews included


def _check_keywords(keywords: Iterable[str], field: str) -> None:
    unknown = [keyword for keyword in keywords if tag_for_keyword(keyword) is None]
    if unknown:
        raise ValueError(f"{field}: {unknown} are not DICOM keywords (see pydicom.datadict)")


class GeometryRule(BaseModel):
    """Accepted image geometry; every range is inclusive."""

    model_config = ConfigDict(extra="forbid")

    rows: tuple[int, int] = (1, 65535)
    columns: tuple[int, int] = (1, 65535)
    pixel_spacing_mm: tuple[float, float] | None = None
    slice_thickness_mm: tuple[float, float] | None = None
    spacing_tolerance_mm: float = Field(
        default=0.01, ge=0, description="Largest deviation of a slice gap from the series' median gap, in mm."
    )

    @model_validator(mode="after")
    def _check_ranges(self) -> GeometryRule:
        for name in ("rows", "columns", "pixel_spacing_mm", "slice_thickness_mm"):
            bounds = getattr(self, name)
            if bounds is not None and bounds[0] > bounds[1]:
                raise ValueError(f"geometry {name}: range {list(bounds)} has min > max")
        return self


class DeidentificationRule(BaseModel):
    """Tags that must be empty or absent, at any depth, and the private blocks allowed."""

    model_config = ConfigDict(extra="forbid")

    empty_or_absent: list[str] = Field(default_factory=list, description="DICOM keywords.")
    patient_identity_removed: bool = Field(
        default=False, description="Require PatientIdentityRemoved = YES."
    )
    allowed_private_creators: list[str] | None = Field(
        default=None, description="PrivateCreator values allowed; None allows any, [] allows none."
    )

    @field_validator("empty_or_absent")
    @classmethod
    def _known(cls, keywords: list[str]) -> list[str]:
        _check_keywords(keywords, "deidentification.empty_or_absent")
        return keywords


class BurnedInTextRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: BurnedInAction = BurnedInAction.EXCLUDE
    sop_classes: list[str] = Field(default_factory=lambda: list(BURNED_IN_SOP_CLASSES))
    modalities: list[str] = Field(default_factory=lambda: list(BURNED_IN_MODALITIES))


class LabelManifestRule(BaseModel):
    """The CSV that ties series (or studies) to labels and masks, and its tabular contract."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="Path of the CSV, relative to the site's data root.")
    contract: str = Field(description="Tabular contract: a shipped name or a YAML path.")
    key: Literal["SeriesInstanceUID", "StudyInstanceUID"] = "SeriesInstanceUID"
    key_column: str = "series_uid"
    label_column: str = "label"
    mask_column: str | None = None


class IngestionRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ct_missing_rescale: MissingRescale = MissingRescale.ERROR
    multiple_series_per_study: MultipleSeries = MultipleSeries.EACH


class DicomContract(BaseModel):
    """A versioned DICOM contract, as written in YAML."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    kind: Literal["dicom"] = "dicom"
    description: str = ""
    required_tags: list[str] = Field(default_factory=list)
    modalities: list[str] | None = None
    sop_classes: list[str] | None = None
    transfer_syntaxes: list[str] | None = None
    photometric_interpretations: list[str] = Field(default_factory=lambda: ["MONOCHROME1", "MONOCHROME2"])
    geometry: GeometryRule = Field(default_factory=GeometryRule)
    deidentification: DeidentificationRule = Field(default_factory=DeidentificationRule)
    burned_in_text: BurnedInTextRule = Field(default_factory=BurnedInTextRule)
    ingestion: IngestionRule = Field(default_factory=IngestionRule)
    label_manifest: LabelManifestRule | None = None
    min_series: int = Field(default=1, ge=1)

    @field_validator("required_tags")
    @classmethod
    def _known(cls, keywords: list[str]) -> list[str]:
        _check_keywords(keywords, "required_tags")
        return keywords


def load_dicom_contract(reference: str | Path) -> DicomContract:
    """Load a DICOM contract by file path or by the name of one shipped in `data_contracts/`."""
    text = read_contract_text(reference)
    try:
        return DicomContract.model_validate(yaml.safe_load(text))
    except ValueError as exc:
        raise DicomContractError(f"invalid DICOM contract {reference}: {exc}") from exc


@dataclass(frozen=True)
class RuleSpec:
    """One rule of a contract as it appears in the report, before any file is checked."""

    rule: str
    column: str | None
    detail: str
    severity: Severity = Severity.ERROR

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.rule, self.column)


Violation = tuple[str, str | None]  # (rule, tag keyword or None)


def file_rules(contract: DicomContract) -> list[RuleSpec]:
    """List the per-file rules of `contract` in report order."""
    rules = [
        RuleSpec("readable", None, "file must be a readable DICOM Part-10 file"),
        RuleSpec("part10_header", None, "file must start with the 128-byte preamble, DICM and file meta"),
    ]
    rules += [RuleSpec("required_tag", keyword, "tag must be present and not empty") for keyword in contract.required_tags]
    if contract.modalities is not None:
        rules.append(RuleSpec("allowed_values", "Modality", f"one of {contract.modalities}"))
    if contract.sop_classes is not None:
        rules.append(RuleSpec("allowed_values", "SOPClassUID", f"one of {len(contract.sop_classes)} SOP classes"))
    if contract.transfer_syntaxes is not None:
        names = [UID(uid).name for uid in contract.transfer_syntaxes]
        rules.append(RuleSpec("allowed_values", "TransferSyntaxUID", f"one of {names}"))
    rules.append(
        RuleSpec("allowed_values", "PhotometricInterpretation", f"one of {contract.photometric_interpretations}")
    )

    geometry = contract.geometry
    rules.append(RuleSpec("in_range", "Rows", f"in [{geometry.rows[0]}, {geometry.rows[1]}]"))
    rules.append(RuleSpec("in_range", "Columns", f"in [{geometry.columns[0]}, {geometry.columns[1]}]"))
    if geometry.pixel_spacing_mm is not None:
        low, high = geometry.pixel_spacing_mm
        rules.append(RuleSpec("in_range", "PixelSpacing", f"both values in [{low:g}, {high:g}] mm"))
    if geometry.slice_thickness_mm is not None:
        low, high = geometry.slice_thickness_mm
        rules.append(RuleSpec("in_range", "SliceThickness", f"in [{low:g}, {high:g}] mm"))

    deid = contract.deidentification
    rules += [
        RuleSpec("empty_or_absent", keyword, "must be empty or absent, nested sequences included")
        for keyword in deid.empty_or_absent
    ]
    if deid.patient_identity_removed:
        rules.append(RuleSpec("allowed_values", "PatientIdentityRemoved", "must be YES"))
    if deid.allowed_private_creators is not None:
        rules.append(
            RuleSpec("private_creator", "PrivateCreator",
                     f"private blocks allowed only for {len(deid.allowed_private_creators)} listed creators")
        )
    rules.append(
        RuleSpec("pixel_data_complete", "PixelData", "PixelData must be present and as long as the image attributes require")
    )
    rules.append(
        RuleSpec("burned_in_text", None,
                 f"may carry burned-in text (SOP class, modality, ImageType or BurnedInAnnotation); "
                 f"action {contract.burned_in_text.action.value}: never leaves the site",
                 Severity.WARNING)
    )
    return rules


def check_dataset(ds: Dataset, contract: DicomContract) -> list[Violation]:
    """Check one file's header against the per-file rules; return the broken (rule, tag) pairs."""
    broken: list[Violation] = []
    for keyword in contract.required_tags:
        if not _present(ds, keyword):
            broken.append(("required_tag", keyword))

    if contract.modalities is not None and text(ds, "Modality") not in contract.modalities:
        broken.append(("allowed_values", "Modality"))
    if contract.sop_classes is not None and text(ds, "SOPClassUID") not in contract.sop_classes:
        broken.append(("allowed_values", "SOPClassUID"))
    if contract.transfer_syntaxes is not None:
        file_meta = getattr(ds, "file_meta", None)
        transfer_syntax = text(file_meta, "TransferSyntaxUID") if file_meta is not None else None
        if transfer_syntax not in contract.transfer_syntaxes:
            broken.append(("allowed_values", "TransferSyntaxUID"))
    if text(ds, "PhotometricInterpretation") not in contract.photometric_interpretations:
        broken.append(("allowed_values", "PhotometricInterpretation"))

    broken += _check_geometry(ds, contract.geometry)
    broken += _check_deidentification(ds, contract.deidentification)
    if burned_in_text_risk(ds, contract.burned_in_text):
        broken.append(("burned_in_text", None))
    return broken


def _in_range(value: float | None, bounds: tuple[float, float]) -> bool:
    return value is not None and bounds[0] <= value <= bounds[1]


def _check_geometry(ds: Dataset, geometry: GeometryRule) -> list[Violation]:
    broken: list[Violation] = []
    if not _in_range(unsigned_short(ds, "Rows"), geometry.rows):
        broken.append(("in_range", "Rows"))
    if not _in_range(unsigned_short(ds, "Columns"), geometry.columns):
        broken.append(("in_range", "Columns"))
    if geometry.pixel_spacing_mm is not None:
        spacing = pixel_spacing(ds)
        if spacing is None or not all(_in_range(value, geometry.pixel_spacing_mm) for value in spacing):
            broken.append(("in_range", "PixelSpacing"))
    if geometry.slice_thickness_mm is not None:
        thickness = number(ds, "SliceThickness")
        if thickness is None:
            thickness = _float_or_none(_functional_group_value(ds, "PixelMeasuresSequence", "SliceThickness"))
        if not _in_range(thickness, geometry.slice_thickness_mm):
            broken.append(("in_range", "SliceThickness"))
    return broken


def _float_or_none(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """Return (row, column) spacing in mm from PixelSpacing or, for enhanced images, the shared functional group."""
    spacing: object = numbers(ds, "PixelSpacing")
    if spacing is None:
        spacing = _functional_group_value(ds, "PixelMeasuresSequence", "PixelSpacing")
    if spacing is None or len(spacing) != 2:  # type: ignore[arg-type]
        return None
    return float(spacing[0]), float(spacing[1])  # type: ignore[index]


def _functional_group_value(ds: Dataset, macro: str, keyword: str) -> object:
    """Return a value from the shared functional group, or else from the first frame's group."""
    for groups_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(groups_keyword)
        if not groups:
            continue
        items = groups[0].get(macro)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return None


def _check_deidentification(ds: Dataset, rule: DeidentificationRule) -> list[Violation]:
    broken: list[Violation] = []
    watched = frozenset(int(tag_for_keyword(keyword)) for keyword in rule.empty_or_absent)  # type: ignore[arg-type]
    findings = IdentifierFindings()
    _walk_identifiers(ds, watched, findings)
    for keyword in rule.empty_or_absent:
        if tag_for_keyword(keyword) in findings.tags_with_values:
            broken.append(("empty_or_absent", keyword))
    if rule.patient_identity_removed and text(ds, "PatientIdentityRemoved") != "YES":
        broken.append(("allowed_values", "PatientIdentityRemoved"))
    if rule.allowed_private_creators is not None:
        if not findings.private_creators <= set(rule.allowed_private_creators):
            broken.append(("private_creator", "PrivateCreator"))
    return broken


@dataclass
class IdentifierFindings:
    """Watched tags that hold a value and the private creators found, at any sequence depth."""

    tags_with_values: set[int] = field(default_factory=set)
    private_creators: set[str] = field(default_factory=set)


def private_creators(ds: Dataset) -> set[str]:
    """Return the PrivateCreator value of every private block, in nested sequences too."""
    findings = IdentifierFindings()
    _walk_identifiers(ds, frozenset(), findings)
    return findings.private_creators


def _walk_identifiers(ds: Dataset, watched: frozenset[int], findings: IdentifierFindings) -> None:
    """Visit every element once, converting only watched tags, private creators and sequences."""
    for tag, element in list(ds.items()):
        if tag in watched:
            if ds[tag].value not in (None, "", b""):
                findings.tags_with_values.add(int(tag))
            continue
        if tag & 0x00010000 and 0x0010 <= (tag & 0xFFFF) <= 0x00FF:  # odd group: a private creator
            value = ds[tag].value
            findings.private_creators.add(value.decode(errors="replace") if isinstance(value, bytes) else str(value))
            continue
        if _is_sequence(tag, element):
            for item in ds[tag].value:
                _walk_identifiers(item, watched, findings)


def _is_sequence(tag: int, element: object) -> bool:
    vr = getattr(element, "VR", None)
    if vr == "SQ":
        return True
    if vr is None:
        # Implicit VR: a public tag's VR comes from the data dictionary, and pydicom
        # reads a private element of undefined length as a sequence.
        # NOTE: a private sequence of defined length in an implicit VR file looks
        # like bytes here, so the watched tags inside it are not checked.
        return tag in SEQUENCE_TAGS or bool(getattr(element, "is_undefined_length", False))
    return False


def _present(ds: Dataset, keyword: str) -> bool:
    """Return whether the element is present and not empty, without converting a raw element."""
    element = ds.get_item(keyword_tag(keyword))
    if element is None:
        return False
    if isinstance(element, RawDataElement):
        if element.value is None:  # deferred read: only the length is known
            return element.length > 0
        # Text values are padded with spaces; binary values such as US 0 are b"\x00\x00" and present.
        return bool(element.value.strip(b" "))
    return element.value not in (None, "", b"") and not (isinstance(element.value, list) and not element.value)


def burned_in_text_risk(ds: Dataset, rule: BurnedInTextRule) -> bool:
    """Return whether the SOP class, modality, ImageType or BurnedInAnnotation suggest burned-in text."""
    if (text(ds, "BurnedInAnnotation") or "").upper() == "YES":
        return True
    if text(ds, "SOPClassUID") in rule.sop_classes or text(ds, "Modality") in rule.modalities:
        return True
    if keyword_tag("ConversionType") in ds:  # present only in secondary capture images
        return True
    return any(value.upper() in BURNED_IN_IMAGE_TYPES for value in values(ds, "ImageType"))


class ReportBuilder:
    """Collect per-file and per-series violations and build the ContractReport."""

    def __init__(self, contract: DicomContract, source: str) -> None:
        self.contract = contract
        self.source = source
        self.specs: dict[tuple[str, str | None], RuleSpec] = {spec.key: spec for spec in file_rules(contract)}
        self.files: dict[tuple[str, str | None], list[str]] = defaultdict(list)
        self.row_results: list[RuleResult] = []

    def add_rule(self, spec: RuleSpec) -> None:
        """Add a rule that is not a per-file rule of the contract (series or manifest rules)."""
        self.specs.setdefault(spec.key, spec)

    def add(self, relative_path: str, violations: Iterable[Violation]) -> None:
        for violation in violations:
            if violation not in self.specs:
                raise KeyError(f"rule {violation} is not declared in the report")
            self.files[violation].append(relative_path)

    def add_rows(self, spec: RuleSpec, rows: list[int]) -> RuleResult:
        """Add a rule checked on manifest rows rather than on files."""
        result = RuleResult(
            rule=spec.rule, column=spec.column, passed=not rows, severity=spec.severity,
            count=len(rows), rows=capped(rows), detail=spec.detail,
        )
        self.row_results.append(result)
        return result

    def build(self, files_read: int, files_kept: int, fingerprint: str | None) -> ContractReport:
        results = []
        for key, spec in self.specs.items():
            files = sorted(set(self.files.get(key, [])))
            results.append(
                RuleResult(
                    rule=spec.rule, column=spec.column, passed=not files, severity=spec.severity,
                    count=len(files), files=capped(files), detail=spec.detail,
                )
            )
        return ContractReport(
            contract=self.contract.name,
            contract_version=self.contract.version,
            source=self.source,
            rows_read=files_read,
            rows_kept=files_kept,
            results=results + self.row_results,
            fingerprint=fingerprint,
        )
