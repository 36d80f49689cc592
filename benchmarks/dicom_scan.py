"""Header scan throughput: medfed's contract-checked scan against a bare pydicom loop.

Writes synthetic CT sites with `medfed synth dicom` (3 sites, 3 slices per
series, 64 x 64 images) unless they exist, then times, on the same files:

- bare: `dcmread(stop_before_pixels=True)` and ten values read per file;
- scan, 1 worker: `scan_folder` with every rule of the `synthetic_ct_lesion`
  contract checked, in this process;
- scan, all CPUs: the same with one worker process per CPU.

Throughput per core is files per second of CPU time of the process that did
the work, so other jobs on the machine do not lower it. Wall-clock rates are
reported beside it. Results go to stdout and `benchmarks/results/dicom_scan.json`.

    .venv/bin/python benchmarks/dicom_scan.py --studies 700
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread

from medfed.data_contracts.dicom import load_dicom_contract
from medfed.sites.dicom.index import available_cpus, scan_folder
from medfed.sites.dicom.synth import SynthConfig, write_sites

BARE_KEYWORDS = (
    "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality", "Rows", "Columns",
    "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "PhotometricInterpretation",
)
RESULTS = Path(__file__).resolve().parent / "results" / "dicom_scan.json"


def timed(work: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Return the median (wall seconds, CPU seconds of this process) over `repeats` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def bare_loop(paths: list[Path]) -> None:
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        for keyword in BARE_KEYWORDS:
            ds.get(keyword)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=700, help="Studies per site (3 files each).")
    parser.add_argument("--out", type=Path, default=Path(".medfed/benchmarks/dicom_scan"),
                        help="Folder of the synthetic sites.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per measurement; the median is kept.")
    args = parser.parse_args()

    if not (args.out / "site_a" / "labels.csv").is_file():
        write_sites(args.out, SynthConfig(studies_per_site=args.studies, slices=3))
    contract = load_dicom_contract("synthetic_ct_lesion")
    sites = sorted(path for path in args.out.iterdir() if (path / "dicom").is_dir())
    paths = sorted(path for site in sites for path in (site / "dicom").rglob("*.dcm"))
    files = len(paths)
    cpus = available_cpus()

    bare_wall, bare_cpu = timed(lambda: bare_loop(paths), args.repeats)
    serial_wall, serial_cpu = timed(
        lambda: [scan_folder(site, contract, subfolder="dicom", workers=1) for site in sites], args.repeats
    )
    parallel_wall, _ = timed(
        lambda: [scan_folder(site, contract, subfolder="dicom", workers=cpus) for site in sites], args.repeats
    )
    report_ok = all(scan_folder(site, contract, subfolder="dicom", workers=1).report.ok for site in sites)

    results = {
        "files": files,
        "cpus": cpus,
        "load_average_1min": os.getloadavg()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "bare_files_per_cpu_second": files / bare_cpu,
        "bare_files_per_second": files / bare_wall,
        "scan_1_worker_files_per_cpu_second": files / serial_cpu,
        "scan_1_worker_files_per_second": files / serial_wall,
        f"scan_{cpus}_workers_files_per_second": files / parallel_wall,
        "every_site_meets_contract": report_ok,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key}: {value:.0f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
