"""Index a site's DICOM folder from headers only, check it against its contract, group series.

Workers read headers (`stop_before_pixels`) in parallel and return, per file,
the few header values the index needs and the contract rules the file breaks.
A file that is not DICOM or is corrupt is reported and skipped. The index
contains UIDs and geometry for loading. The report contains rule names,
counts and paths relative to the data root, never values.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import multiprocessing.context
import os
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medfed.data_contracts.dicom import (
    BurnedInAction,
    DicomContract,
    MultipleSeries,
    ReportBuilder,
    RuleSpec,
    Violation,
    check_dataset,
)
from medfed.data_contracts.dicom_values import number, numbers, text
from medfed.data_contracts.report import ContractReport, Severity
from medfed.sites.dicom.codecs import decoder_gap
from medfed.sites.dicom.headers import HeaderlessFileError, inferred_transfer_syntax, quiet_validation, read_header

logger = logging.getLogger(__name__)

# Below this many files one process scans faster than handing chunks to
# workers, because starting the forkserver costs about 0.3 s once per process
# and a header takes about 0.4 ms (estimates from benchmarks/dicom_scan.py on 2 cores).
PARALLEL_MIN_FILES = 400
CHUNK_FILES = 200


class SeriesNotFoundError(KeyError):
    """The requested series is not in the index."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "series not found"


@dataclass(frozen=True)
class InstanceEntry:
    """Header values of one usable file that loading and grouping need."""

    path: str  # relative to the data root
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    modality: str
    transfer_syntax: str
    part10: bool
    frames: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    burned_in: bool


@dataclass
class SeriesEntry:
    """The usable files of one series and whether the series may be loaded."""

    uid: str
    study_uid: str
    modality: str
    instances: list[InstanceEntry] = field(default_factory=list)
    rejected_files: list[str] = field(default_factory=list)
    geometry_problem: str | None = None  # a rule name from the series rules, never a value

    @property
    def complete(self) -> bool:
        return not self.rejected_files and self.geometry_problem is None

    @property
    def burned_in(self) -> bool:
        return any(instance.burned_in for instance in self.instances)

    @property
    def may_leave_site(self) -> bool:
        """Whether anything derived from its pixels (previews, sample images) may be sent off site."""
        return not self.burned_in

    @property
    def first_path(self) -> str:
        return min(instance.path for instance in self.instances) if self.instances else "-"


@dataclass
class DicomIndex:
    """All series found under a data root, with the contract report of the scan."""

    root: Path
    series: dict[str, SeriesEntry]
    report: ContractReport

    def get(self, series_uid: str) -> SeriesEntry:
        """Return the indexed series with this SeriesInstanceUID or raise SeriesNotFoundError."""
        try:
            return self.series[series_uid]
        except KeyError:
            raise SeriesNotFoundError(
                f"no series with the requested SeriesInstanceUID under {self.root.name}/: "
                f"{len(self.series)} series are indexed; list them with DicomIndex.series"
            ) from None

    def usable_series(self) -> list[SeriesEntry]:
        """Return the complete series, in SeriesInstanceUID order, that training may use."""
        return [entry for uid, entry in sorted(self.series.items()) if entry.complete]


@dataclass
class FileOutcome:
    path: str
    entry: InstanceEntry | None
    violations: list[Violation]
    pixel_bytes: int = 0
    error_type: str | None = None  # exception class name for unreadable files, never its message


def scan_folder(
    root: Path,
    contract: DicomContract,
    *,
    subfolder: str = ".",
    workers: int | None = None,
    tolerant: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> DicomIndex:
    """Index every file under `root / subfolder` from its header and check it against `contract`.

    Paths in the index and the report are relative to `root`, the site's
    data root. `workers` defaults to the CPUs this process may use;
    `tolerant` reads files without the Part-10 header, with the transfer
    syntax inferred. `on_progress(files_done, files_total)` is called after
    each chunk of files, for progress bars.
    """
    root = root.resolve()
    folder = (root / subfolder).resolve()
    if not folder.is_relative_to(root):
        raise ValueError(f"subfolder {subfolder!r} is outside the data root")
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM folder {subfolder!r} not found under the data root")
    paths, outside = [], 0
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        if not path.resolve().is_relative_to(root):
            outside += 1  # a symbolic link out of the data root: never read
            continue
        paths.append(str(path.relative_to(root)))
    if outside:
        logger.warning("%s: skipped %d file(s) that link outside the data root", root.name, outside)
    paths.sort()
    outcomes = _scan_paths(root, paths, contract, workers=workers, tolerant=tolerant, on_progress=on_progress)
    return build_index(root, outcomes, contract)


def available_cpus() -> int:
    """Return the number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _scan_paths(
    root: Path,
    paths: list[str],
    contract: DicomContract,
    *,
    workers: int | None,
    tolerant: bool,
    on_progress: Callable[[int, int], None] | None,
) -> list[FileOutcome]:
    workers = workers or available_cpus()
    contract_data = contract.model_dump(mode="json")
    outcomes: list[FileOutcome] = []
    if workers == 1 or len(paths) < PARALLEL_MIN_FILES:
        for start in range(0, len(paths), CHUNK_FILES):
            outcomes.extend(scan_chunk(str(root), paths[start:start + CHUNK_FILES], contract_data, tolerant))
            if on_progress is not None:
                on_progress(len(outcomes), len(paths))
        return outcomes

    chunk_size = max(1, min(CHUNK_FILES, len(paths) // (workers * 4) or 1))
    chunks = [paths[start:start + chunk_size] for start in range(0, len(paths), chunk_size)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context()) as pool:
        futures = [pool.submit(scan_chunk, str(root), chunk, contract_data, tolerant) for chunk in chunks]
        for future in futures:
            outcomes.extend(future.result())
            if on_progress is not None:
                on_progress(len(outcomes), len(paths))
    return outcomes


def _worker_context() -> multiprocessing.context.BaseContext:
    """Return the forkserver context with this module preloaded.

    Forking a process that runs threads (a Prefect worker does) can copy held
    locks, so workers fork from a clean server process instead. The server
    starts once per process and imports this module once, so later scans
    start their workers in milliseconds.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def scan_chunk(root: str, paths: list[str], contract_data: dict, tolerant: bool) -> list[FileOutcome]:
    """Read and check the headers of `paths`; runs in a worker process."""
    contract = DicomContract.model_validate(contract_data)
    base = Path(root)
    with quiet_validation():
        return [scan_file(base, path, contract, tolerant) for path in paths]


def scan_file(root: Path, relative: str, contract: DicomContract, tolerant: bool) -> FileOutcome:
    """Read one header and return its index entry and broken rules; never raises for a bad file."""
    try:
        header = read_header(root / relative, tolerant=tolerant)
    except HeaderlessFileError:
        return FileOutcome(relative, None, [("part10_header", None)])
    except InvalidDicomError:
        return FileOutcome(relative, None, [("readable", None)], error_type="InvalidDicomError")
    except Exception as exc:  # noqa: BLE001 - any reading error of one file must not stop the scan
        return FileOutcome(relative, None, [("readable", None)], error_type=type(exc).__name__)

    ds = header.dataset
    if "SOPClassUID" not in ds and "SOPInstanceUID" not in ds:
        # pydicom reads a damaged file as far as it can; without either UID it is no DICOM instance.
        return FileOutcome(relative, None, [("readable", None)], error_type="NoSOPInstance")
    try:
        violations = check_dataset(ds, contract)
        entry = _entry(relative, ds, header.part10, burned_in=("burned_in_text", None) in violations)
    except Exception as exc:  # noqa: BLE001 - a malformed value in one header must not stop the scan
        return FileOutcome(relative, None, [("readable", None)], error_type=type(exc).__name__)
    if header.pixels is None or not header.pixels.complete:
        violations.append(("pixel_data_complete", "PixelData"))
    pixel_bytes = header.pixels.present if header.pixels else 0
    return FileOutcome(relative, entry, violations, pixel_bytes=pixel_bytes)


def _entry(relative: str, ds: Dataset, part10: bool, *, burned_in: bool) -> InstanceEntry:
    position = numbers(ds, "ImagePositionPatient")
    orientation = numbers(ds, "ImageOrientationPatient")
    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = text(file_meta, "TransferSyntaxUID") if file_meta is not None else None
    if not transfer_syntax:
        # Header-less file read in tolerant mode: pydicom inferred the encoding.
        transfer_syntax = inferred_transfer_syntax(ds)
    return InstanceEntry(
        path=relative,
        sop_instance_uid=text(ds, "SOPInstanceUID") or "",
        series_uid=text(ds, "SeriesInstanceUID") or "",
        study_uid=text(ds, "StudyInstanceUID") or "",
        modality=text(ds, "Modality") or "",
        transfer_syntax=str(transfer_syntax),
        part10=part10,
        frames=int(number(ds, "NumberOfFrames") or 1),
        position=tuple(position) if position is not None and len(position) == 3 else None,  # type: ignore[arg-type]
        orientation=tuple(orientation) if orientation is not None and len(orientation) == 6 else None,
        burned_in=burned_in,
    )


SERIES_RULES = (
    RuleSpec("series_complete", None, "every file of a series must be usable; series with rejected files are not loaded"),
    RuleSpec("slice_geometry", None,
             "slices of a series share one orientation, have distinct positions along the normal "
             "and gaps equal within the contract's spacing tolerance"),
    RuleSpec("series_uid", "SeriesInstanceUID", "file must name its series"),
)


def build_index(root: Path, outcomes: list[FileOutcome], contract: DicomContract) -> DicomIndex:
    """Group checked files into series, apply the series rules and build the report."""
    builder = ReportBuilder(contract, source=root.name or str(root))
    for spec in SERIES_RULES:
        builder.add_rule(spec)
    if contract.ingestion.multiple_series_per_study == MultipleSeries.REJECT:
        builder.add_rule(RuleSpec("one_series_per_study", "StudyInstanceUID", "a study must hold exactly one series"))

    _add_decoder_rules(outcomes, builder)
    error_rules = {key for key, spec in builder.specs.items() if spec.severity == Severity.ERROR}
    exclude_burned_in = contract.burned_in_text.action == BurnedInAction.EXCLUDE

    series: dict[str, SeriesEntry] = {}
    unreadable_types: dict[str, int] = defaultdict(int)
    for outcome in outcomes:
        builder.add(outcome.path, outcome.violations)
        if outcome.error_type:
            unreadable_types[outcome.error_type] += 1
        entry = outcome.entry
        if entry is None:
            continue
        if not entry.series_uid:
            builder.add(outcome.path, [("series_uid", "SeriesInstanceUID")])
            continue
        item = series.setdefault(entry.series_uid, SeriesEntry(entry.series_uid, entry.study_uid, entry.modality))
        rejected = any(violation in error_rules for violation in outcome.violations)
        if rejected or (entry.burned_in and exclude_burned_in):
            item.rejected_files.append(entry.path)
        else:
            item.instances.append(entry)

    _check_series(series, contract, builder)
    kept = [entry for entry in series.values() if entry.complete]
    files_kept = sum(len(entry.instances) for entry in kept)
    report = builder.build(files_read=len(outcomes), files_kept=files_kept, fingerprint=_fingerprint(kept, outcomes))
    if unreadable_types:
        logger.warning(
            "%s: %d file(s) are not readable DICOM and were skipped (%s)",
            report.source, sum(unreadable_types.values()),
            ", ".join(f"{name}: {count}" for name, count in sorted(unreadable_types.items())),
        )
    logger.info(
        "%s: indexed %d file(s) into %d series, %d complete; %d rule(s) broken",
        report.source, len(outcomes), len(series), len(kept), len(report.errors),
    )
    return DicomIndex(root=root, series=series, report=report)


def _add_decoder_rules(outcomes: list[FileOutcome], builder: ReportBuilder) -> None:
    """Add one rule per transfer syntax found that no installed package decodes, naming its files."""
    files_without_decoder: dict[str, int] = defaultdict(int)
    for outcome in outcomes:
        if outcome.entry is None:
            continue
        gap = decoder_gap(outcome.entry.transfer_syntax)
        if gap is None:
            continue
        builder.add_rule(RuleSpec("decoder_available", f"TransferSyntaxUID={gap.transfer_syntax}", gap.message()))
        outcome.violations.append(("decoder_available", f"TransferSyntaxUID={gap.transfer_syntax}"))
        files_without_decoder[gap.transfer_syntax] += 1
    for transfer_syntax, count in sorted(files_without_decoder.items()):
        logger.warning("%s: %d file(s) cannot be decoded here", decoder_gap(transfer_syntax).message(), count)  # type: ignore[union-attr]


def _check_series(series: dict[str, SeriesEntry], contract: DicomContract, builder: ReportBuilder) -> None:
    studies: dict[str, list[SeriesEntry]] = defaultdict(list)
    for entry in series.values():
        studies[entry.study_uid].append(entry)
        if entry.rejected_files:
            builder.add(entry.first_path if entry.instances else entry.rejected_files[0], [("series_complete", None)])
            continue
        problem = slice_geometry_problem(entry.instances, contract.geometry.spacing_tolerance_mm)
        if problem is not None:
            entry.geometry_problem = problem
            builder.add(entry.first_path, [("slice_geometry", None)])
    if contract.ingestion.multiple_series_per_study == MultipleSeries.REJECT:
        for members in studies.values():
            if len(members) > 1:
                for entry in members:
                    entry.geometry_problem = entry.geometry_problem or "one_series_per_study"
                    builder.add(entry.first_path, [("one_series_per_study", "StudyInstanceUID")])


def slice_geometry_problem(instances: list[InstanceEntry], tolerance_mm: float) -> str | None:
    """Return why single-frame slices do not form a regular stack, or None when they do."""
    single_frame = [instance for instance in instances if instance.frames == 1]
    if len(single_frame) < 2 or len(single_frame) != len(instances):
        return None  # a single image or multi-frame files: geometry is checked when loading
    if any(instance.position is None or instance.orientation is None for instance in single_frame):
        return "missing ImagePositionPatient or ImageOrientationPatient"
    orientations = np.array([instance.orientation for instance in single_frame])
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        return "slices differ in ImageOrientationPatient"
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    distances = np.sort(np.array([instance.position for instance in single_frame]) @ normal)
    gaps = np.diff(distances)
    if gaps.min() <= tolerance_mm:
        return "two slices share a position along the slice normal"
    if np.abs(gaps - np.median(gaps)).max() > tolerance_mm:
        return "slice gaps differ by more than the spacing tolerance"
    return None


def _fingerprint(kept: list[SeriesEntry], outcomes: list[FileOutcome]) -> str:
    """Hash the kept instances' UIDs and pixel byte counts: content, not file names."""
    pixel_bytes = {outcome.path: outcome.pixel_bytes for outcome in outcomes}
    digest = hashlib.sha256()
    rows = sorted(
        (instance.sop_instance_uid, instance.transfer_syntax, pixel_bytes.get(instance.path, 0))
        for entry in kept for instance in entry.instances
    )
    for uid, transfer_syntax, size in rows:
        digest.update(f"{uid}|{transfer_syntax}|{size}\n".encode())
    return digest.hexdigest()
