"""Round overhead of the deployed shape on loopback: trigger to round complete, minus site compute.

Starts a Prefect server, an MLflow server (SQLite, artifact proxy) and one
site agent per site as separate processes on 127.0.0.1, registers the
deployments, and runs a heart-disease federation with the central flow in
this process. Per round it measures

- wall: from the end of the previous round (for round 1: the end of the
  statistics phase) to the end of this round, as the central flow publishes it;
- compute: for each dispatch of the round (train, evaluate), the longest time
  a site spent inside its job (`SiteResult.compute_seconds`), summed;
- overhead = wall - compute: everything else (flow-run creation, the agents'
  pick-up and state changes, the exchange through the MLflow artifact proxy,
  validation, aggregation and the round's MLflow logging).

Usage: .venv/bin/python benchmarks/deployed_round_overhead.py [--rounds 10] [--sites 3]
       [--poll-interval 10] [--no-events] [--output benchmarks/results/deployed_round_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITES = ("cleveland", "hungarian", "switzerland", "va")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="Rounds of the federation (default 10).")
    parser.add_argument("--sites", type=int, default=3, choices=range(1, 5), help="Site agents, 1-4 (default 3).")
    parser.add_argument("--poll-interval", type=float, default=10.0,
                        help="Agents' work-pool poll interval in seconds (default 10, the site config default).")
    parser.add_argument("--no-events", action="store_true",
                        help="Agents poll only, without waking on the Prefect event stream.")
    parser.add_argument("--prefect-server-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="Extra PREFECT_* setting for the Prefect server, such as "
                             "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED=false; repeatable.")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "deployed_round_overhead.json")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="medfed-deployed-bench-"))
    os.environ["MEDFED_HOME"] = str(root / "centre-home")

    from medfed.pipelines.loopback import LoopbackStack, wait_for_log

    stack = LoopbackStack(root / "stack")
    try:
        started = time.monotonic()
        server_settings = dict(item.split("=", 1) for item in args.prefect_server_setting)
        stack.start_servers(server_settings)
        sites = SITES[: args.sites]
        extra = "" if not args.no_events else "wake_on_events: false\n"
        configs = [stack.write_site(s, REPO / "data" / "heart_disease" / s / f"processed.{s}.data",
                                    poll_interval_s=args.poll_interval, extra=extra) for s in sites]
        agents = [stack.start_agent(c) for c in configs]
        ready_line = "listening for flow runs scheduled on pool" if not args.no_events else "started!"
        for agent in agents:
            wait_for_log(agent, ready_line, 120)
        setup_s = time.monotonic() - started
        result = run_federation_timed(stack, sites, args.rounds)
    finally:
        stack.stop_all()

    result.update({
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "sites": list(sites), "rounds": args.rounds, "poll_interval_s": args.poll_interval,
        "wake_on_events": not args.no_events, "stack_setup_s": round(setup_s, 2),
        "prefect_server_settings": args.prefect_server_setting,
    })
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    steady = result["steady_rounds"]
    print(f"rounds 2..{args.rounds}: overhead median {steady['overhead_median_s']:.3f} s, "
          f"max {steady['overhead_max_s']:.3f} s; round wall median {steady['wall_median_s']:.3f} s; "
          f"site compute median {steady['compute_median_s']:.3f} s")
    print(f"round 1: wall {result['per_round'][0]['wall_s']:.3f} s, overhead {result['per_round'][0]['overhead_s']:.3f} s")
    print(f"written to {args.output}")
    return 0


def run_federation_timed(stack, sites: tuple[str, ...], rounds: int) -> dict:
    """Register the deployments, run the federation in a flow of this process, and time every round."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from medfed.pipelines import progress
    from medfed.pipelines.config import load_experiment
    from medfed.pipelines.deployed import DeployedDispatcher, deploy
    from medfed.pipelines.federation import new_federation_id, run_federation
    from medfed.sites.remote_store import open_store

    config = load_experiment(REPO / "examples" / "heart_disease" / "experiment.yaml")
    config = config.model_copy(update={
        "sites": list(sites), "rounds": rounds, "round_timeout_s": 120.0,
        "tracking": config.tracking.model_copy(update={"uri": stack.mlflow_uri}),
        "baselines": config.baselines.model_copy(update={"pooled": False, "local": False}),
    })

    marks: dict[int, float] = {}

    def on_round(event: progress.RoundEvent) -> None:
        marks[event.round] = time.perf_counter()

    @flow(name="medfed-federation-deployed-benchmark", persist_result=False)
    def benchmark_flow() -> tuple[list, str]:
        store = open_store(config.deployed.exchange_uri, tracking_uri=config.tracking_uri())
        with get_client(sync_client=True) as client:
            dispatcher = DeployedDispatcher(config.sites, store, client,
                                            poll_interval_s=config.deployed.poll_interval_s)
            summary = run_federation(config, dispatcher, store, federation_id=new_federation_id(config.study),
                                     tracking_uri=config.tracking_uri(), artifact_root=None)
        return dispatcher.timings, summary.run_id

    progress.add_listener(on_round)
    try:
        with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
            deploy(config)
            started = time.perf_counter()
            timings, run_id = benchmark_flow()
            total_s = time.perf_counter() - started
        with temporary_settings(updates={PREFECT_API_URL: stack.prefect_api_url}):
            flow_runs = site_flow_run_latencies()
    finally:
        progress.remove_listener(on_round)

    statistics_end = started + sum(t.wall_s for t in timings if t.phase == "statistics")
    per_round = []
    for number in range(1, rounds + 1):
        begin = marks.get(number - 1, statistics_end)
        wall = marks[number] - begin
        dispatches = [t for t in timings if t.round == number]
        compute = sum(t.max_compute_s for t in dispatches)
        dispatch_wall = sum(t.wall_s for t in dispatches)
        per_round.append({
            "round": number, "wall_s": round(wall, 4), "site_compute_s": round(compute, 4),
            "overhead_s": round(wall - compute, 4),
            "dispatch_overhead_s": round(dispatch_wall - compute, 4),
            "centre_work_s": round(wall - dispatch_wall, 4),
        })
    steady = per_round[1:] or per_round
    return {
        "federation_total_s": round(total_s, 2), "mlflow_run_id": run_id, "site_flow_runs": flow_runs,
        "per_round": per_round,
        "steady_rounds": {
            "overhead_median_s": statistics.median(r["overhead_s"] for r in steady),
            "overhead_max_s": max(r["overhead_s"] for r in steady),
            "wall_median_s": statistics.median(r["wall_s"] for r in steady),
            "compute_median_s": statistics.median(r["site_compute_s"] for r in steady),
            "dispatch_overhead_median_s": statistics.median(r["dispatch_overhead_s"] for r in steady),
            "centre_work_median_s": statistics.median(r["centre_work_s"] for r in steady),
        },
    }


def site_flow_run_latencies() -> dict:
    """Median pick-up (created -> Running) and run (Running -> final) times of the site flow runs, in seconds."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["site-round"])), limit=200)
    pickup = [(r.start_time - r.created).total_seconds() for r in runs if r.start_time and r.created]
    running = [(r.end_time - r.start_time).total_seconds() for r in runs if r.end_time and r.start_time]
    return {"count": len(runs), "pickup_median_s": round(statistics.median(pickup), 4) if pickup else None,
            "pickup_max_s": round(max(pickup), 4) if pickup else None,
            "running_median_s": round(statistics.median(running), 4) if running else None}


if __name__ == "__main__":
    raise SystemExit(main())
