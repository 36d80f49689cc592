"""The `medfed` command line.

Heavy libraries (Prefect, MLflow, torch, MONAI) are imported inside the
commands that need them, so `medfed --help` and `medfed site check` start fast.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.table import Table

import medfed

app = typer.Typer(
    name="medfed",
    help="Federated learning across hospitals: run federations, check and operate sites.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
site_app = typer.Typer(help="Commands hospital IT runs at a site.", no_args_is_help=True)
app.add_typer(site_app, name="site")

console = Console()
logger = logging.getLogger("medfed.cli")

DEMO_EXPERIMENT = Path(medfed.__file__).resolve().parent.parent / "examples" / "heart_disease" / "experiment.yaml"


def _configure_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    for noisy in ("httpx", "prefect", "alembic", "mlflow", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML file.", exists=True, dir_okay=False)],
    rounds: Annotated[int | None, typer.Option(help="Override the number of rounds.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the experiment seed.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else a SQLite file in the workdir).")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Folder for the exchange store and local MLflow files.")] = None,
    baselines: Annotated[bool, typer.Option(help="Also train the pooled and per-site baselines.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every lifecycle step.")] = False,
    deployed: Annotated[bool, typer.Option("--deployed", help="Reach the sites' agents through the Prefect server (PREFECT_API_URL); sites are site ids.")] = False,
) -> None:
    """Run a federation (embedded shape, or --deployed) and print the final table."""
    _configure_logging(verbose)
    from medfed.pipelines.config import load_experiment

    from pydantic import ValidationError

    overrides: dict[str, Any] = {"rounds": rounds, "seed": seed, "workdir": str(workdir) if workdir else None}
    try:
        config = load_experiment(experiment, overrides)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]Invalid experiment config {experiment}:[/]\n{exc}")
        raise typer.Exit(2) from None
    if tracking_uri:
        config = config.model_copy(update={"tracking": config.tracking.model_copy(update={"uri": tracking_uri})})
    if not baselines:
        config = config.model_copy(update={"baselines": config.baselines.model_copy(update={"pooled": False, "local": False})})
    from medfed.pipelines.preflight import ExperimentError, check_experiment

    if not deployed and os.environ.pop("PREFECT_API_URL", None):
        # The embedded shape must not send flow state to whatever server the shell points at.
        console.print("[yellow]Ignoring PREFECT_API_URL: the embedded shape runs its own temporary Prefect server.")
    try:
        check_experiment(config, embedded=not deployed)
    except ExperimentError as exc:
        console.print(f"[red]The experiment {experiment} cannot start:[/]\n{exc}")
        raise typer.Exit(2) from None
    from medfed.pipelines.federation import QuorumNotMet

    try:
        if deployed:
            from medfed.cli_deployed import run_deployed

            run_deployed(config)
        else:
            _run_embedded(config)
    except QuorumNotMet as exc:
        console.print(f"[red]Federation stopped:[/] {exc}\nRounds already finished stay in MLflow.")
        raise typer.Exit(1) from None


@app.command()
def demo(
    rounds: Annotated[int | None, typer.Option(help="Override the number of rounds.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the experiment seed.")] = None,
    workdir: Annotated[Path | None, typer.Option(help="Folder for the exchange store and local MLflow files.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the four-hospital heart-disease federation on the bundled data."""
    if not DEMO_EXPERIMENT.is_file():
        console.print(f"[red]The demo experiment {DEMO_EXPERIMENT} is missing; run the demo from a medfed checkout.")
        raise typer.Exit(2)
    run(DEMO_EXPERIMENT, rounds=rounds, seed=seed, tracking_uri=None, workdir=workdir, baselines=True,
        verbose=verbose, deployed=False)


def _run_embedded(config) -> None:
    from medfed.cli_progress import round_progress_bar
    from medfed.pipelines.baselines import run_baselines
    from medfed.pipelines.federation import federation_flow, new_federation_id
    from medfed.pipelines.tracking import local_artifact_root

    federation_id = new_federation_id(config.study)
    console.print(f"Federation [bold]{federation_id}[/]: {len(config.sites)} sites, {config.rounds} rounds, "
                  f"strategy {config.strategy.get('name', 'fedavg')}")
    with round_progress_bar(console, config.rounds, "starting sites"):
        summary = federation_flow(config, federation_id=federation_id)

    rows: dict[str, dict[str, float]] = {"federated": {
        **{f"site/{s}/{k}": v for s, m in summary.site_metrics.items() for k, v in m.items()},
        **{k: v for k, v in summary.rounds[-1].metrics.items() if k.endswith("_mean")},
    }}
    if config.baselines.pooled or config.baselines.local:
        chosen = [name for name, wanted in (("pooled", config.baselines.pooled),
                                            ("each site alone", config.baselines.local)) if wanted]
        console.print(f"Training baselines ({' and '.join(chosen)}) for comparison...")
        workdir = config.workdir.resolve()
        rows.update(run_baselines(config, federation_id, summary.tracking_uri,
                                  local_artifact_root(summary.tracking_uri, workdir)))
    console.print(results_table(rows, summary.site_ids))
    console.print(f"MLflow run {summary.run_id} in experiment '{config.study}' at {summary.tracking_uri}")
    if summary.registered_version:
        console.print(f"Registered model '{summary.registered_model}' version {summary.registered_version}")
    if summary.tracking_uri.startswith("sqlite:"):
        console.print(f"Open the UI: mlflow ui --backend-store-uri {summary.tracking_uri}")


def results_table(rows: dict[str, dict[str, float]], site_ids: list[str]) -> Group:
    """Final tables: test accuracy, AUC or Dice per site and their mean, for each training setup.

    A metric that no setup reports (Dice for a classifier, accuracy for a
    segmentation model) gets no table.
    """
    tables = []
    for metric, title in (("accuracy", "Test accuracy"), ("auc", "Test AUC"), ("dice", "Test Dice score")):
        if not any(name == f"{metric}_mean" or name.endswith(f"/{metric}") for m in rows.values() for name in m):
            continue
        table = Table(title=f"{title} of the final model on each site's test split")
        table.add_column("trained as")
        for site_id in site_ids:
            table.add_column(site_id, justify="right")
        table.add_column("mean", justify="right", style="bold")
        for label, metrics in rows.items():
            cells = [metrics.get(f"site/{s}/{metric}") for s in site_ids] + [metrics.get(f"{metric}_mean")]
            table.add_row(label, *("-" if v is None else f"{v:.3f}" for v in cells))
        tables.append(table)
    return Group(*tables)


@site_app.command("check")
def site_check(
    site_config: Annotated[Path, typer.Argument(help="Site YAML file.", exists=True, dir_okay=False)],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Validate a site's config, its data against their contracts and the servers it uses; exit 1 when not ready."""
    _configure_logging(verbose)
    from medfed.cli_deployed import add_server_checks
    from medfed.sites.check import check_site, render_check

    outcome = check_site(site_config)
    add_server_checks(outcome)
    render_check(outcome, console)
    raise typer.Exit(0 if outcome.ready else 1)


from medfed.cli_deployed import register as _register_deployed_commands  # noqa: E402

_register_deployed_commands(app, site_app)


try:  # The DICOM generator lives in its own module; mount it when present.
    from medfed.cli_synth import app as synth_app

    app.add_typer(synth_app, name="synth", help="Write synthetic multi-site data for demos and tests.")
except ImportError:  # pragma: no cover - only while that module is absent
    pass


if __name__ == "__main__":
    app()
