"""Demo federation over seeds 42-46: mean-of-four test accuracy and wall time per federation.

Runs the bundled heart-disease experiment (embedded shape) once per seed in
one process, so Prefect's temporary server starts once, and writes
benchmarks/results/demo_seeds.json. Usage:

    .venv/bin/python benchmarks/demo_seeds.py [--seeds 42 43 44 45 46] [--no-baselines]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = REPO / "examples" / "heart_disease" / "experiment.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    parser.add_argument("--experiment", type=Path, default=EXPERIMENT)
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "demo_seeds.json")
    args = parser.parse_args()

    started = time.perf_counter()
    from medfed.pipelines.baselines import run_baselines
    from medfed.pipelines.config import load_experiment
    from medfed.pipelines.federation import federation_flow
    from medfed.pipelines.tracking import local_artifact_root

    import_s = time.perf_counter() - started
    workdir = Path(tempfile.mkdtemp(prefix="medfed-demo-seeds-"))
    rows = []
    for seed in args.seeds:
        config = load_experiment(args.experiment, {"seed": seed, "workdir": str(workdir)})
        t0 = time.perf_counter()
        summary = federation_flow(config)
        federation_s = time.perf_counter() - t0
        row = {"seed": seed, "federation_s": round(federation_s, 2),
               "federated": {k: v for k, v in summary.rounds[-1].metrics.items()
                             if k == "accuracy_mean" or k.endswith("/accuracy")}}
        if not args.no_baselines:
            baselines = run_baselines(config, summary.federation_id, summary.tracking_uri,
                                      local_artifact_root(summary.tracking_uri, workdir))
            row["pooled"] = {k: v for k, v in baselines["pooled"].items()
                             if k == "accuracy_mean" or k.endswith("/accuracy")}
        rows.append(row)
        print(f"seed {seed}: federated accuracy_mean {row['federated']['accuracy_mean']:.4f}"
              + (f", pooled {row['pooled']['accuracy_mean']:.4f}" if "pooled" in row else "")
              + f", federation {federation_s:.1f} s")

    federated = [r["federated"]["accuracy_mean"] for r in rows]
    result = {
        "command": "python benchmarks/demo_seeds.py" + (" --no-baselines" if args.no_baselines else ""),
        "machine": f"{platform.machine()}, {platform.python_version()}, {__import__('os').cpu_count()} cores",
        "experiment": str(args.experiment.relative_to(REPO)) if args.experiment.is_relative_to(REPO) else str(args.experiment),
        "import_s": round(import_s, 2),
        "seeds": rows,
        "federated_accuracy_mean": statistics.mean(federated),
        "federated_accuracy_std": statistics.stdev(federated) if len(federated) > 1 else 0.0,
    }
    if not args.no_baselines:
        pooled = [r["pooled"]["accuracy_mean"] for r in rows]
        result["pooled_accuracy_mean"] = statistics.mean(pooled)
        result["pooled_accuracy_std"] = statistics.stdev(pooled) if len(pooled) > 1 else 0.0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"federated mean-of-sites accuracy over seeds {args.seeds}: "
          f"{result['federated_accuracy_mean']:.4f} ± {result['federated_accuracy_std']:.4f}")
    if "pooled_accuracy_mean" in result:
        print(f"pooled: {result['pooled_accuracy_mean']:.4f} ± {result['pooled_accuracy_std']:.4f}")


if __name__ == "__main__":
    main()
