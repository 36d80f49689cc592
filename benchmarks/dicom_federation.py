"""Three-site synthetic DICOM federation through `medfed run`, against the same model trained pooled.

Writes the synthetic CT sites of the DICOM lesion example with
`medfed synth dicom` (100 studies per site by default, set with --studies),
then runs the example exactly as a researcher would:

    .venv/bin/medfed synth dicom .medfed/synthetic_ct --studies 100
    .venv/bin/medfed run examples/dicom_lesion/experiment.yaml --workdir <folder>

and reads the federated and pooled runs back from MLflow: the final AUC per
site and its mean, the wall time of the whole command and of the federation
alone (the MLflow run's start to end), and the CPU time of the command. The
load average before and after is recorded because other jobs on the machine
stretch wall times. Results go to stdout and
`benchmarks/results/dicom_federation.json`.

    .venv/bin/python benchmarks/dicom_federation.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = REPO / "examples" / "dicom_lesion" / "experiment.yaml"
DATA = REPO / ".medfed" / "synthetic_ct"  # where the example's site configs point
MEDFED = Path(sys.executable).with_name("medfed")
RESULTS = Path(__file__).resolve().parent / "results" / "dicom_federation.json"
SITES = ("site_a", "site_b", "site_c")
# The acceptance limit of the whole `medfed run` command on a 2-core CPU machine.
LIMIT_SECONDS = 600


def final_metrics(client: MlflowClient, run_id: str) -> dict[str, float]:
    """Return the AUC and accuracy of a run's last step, per site and as the mean over sites."""
    metrics = client.get_run(run_id).data.metrics
    keys = ["auc_mean", "accuracy_mean", *(f"site/{s}/{name}" for s in SITES for name in ("auc", "accuracy"))]
    return {key: round(metrics[key], 4) for key in keys if key in metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100, help="Studies per site to write.")
    args = parser.parse_args()

    synth_command = [str(MEDFED), "synth", "dicom", str(DATA), "--studies", str(args.studies)]
    subprocess.run(synth_command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)

    workdir = Path(tempfile.mkdtemp(prefix="medfed-dicom-benchmark-"))
    run_command = [str(MEDFED), "run", str(EXPERIMENT), "--workdir", str(workdir)]
    load_before = os.getloadavg()
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(run_command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_after = os.getloadavg()
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("dicom-lesion")
    runs = client.search_runs([experiment.experiment_id])
    federated = next(run for run in runs if run.data.tags["medfed.kind"] == "federated")
    pooled = next(run for run in runs if run.data.tags["medfed.kind"] == "pooled")
    local_runs = [run for run in runs if run.data.tags["medfed.kind"] == "local"]
    federation_seconds = (federated.info.end_time - federated.info.start_time) / 1000
    result = {
        "command": " && ".join([
            f".venv/bin/medfed synth dicom .medfed/synthetic_ct --studies {args.studies}",
            "medfed run examples/dicom_lesion/experiment.yaml --workdir <folder>",
        ]),
        "studies_per_site": args.studies,
        "federated": final_metrics(client, federated.info.run_id),
        "pooled": final_metrics(client, pooled.info.run_id),
        "local": {run.data.tags["medfed.trained_on"]: final_metrics(client, run.info.run_id) for run in local_runs},
        "run_wall_seconds": round(wall, 1),
        "federation_wall_seconds": round(federation_seconds, 1),
        "run_cpu_seconds": round(cpu, 1),
        "within_limit": wall < LIMIT_SECONDS,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    gap = result["pooled"]["auc_mean"] - result["federated"]["auc_mean"]
    result["auc_gap_pooled_minus_federated"] = round(gap, 4)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
