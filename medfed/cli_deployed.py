"""Commands of the deployed shape: `site agent`, `site audit`, `deploy` and `run --deployed`.

`medfed.cli` mounts these on its app with `register`; heavy imports stay
inside the commands.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from medfed.pipelines.config import ExperimentConfig
    from medfed.sites.check import SiteCheck

console = Console()
logger = logging.getLogger("medfed.cli")

QUIET_LOGGERS = ("httpx", "httpcore", "prefect", "alembic", "mlflow", "urllib3", "websockets")


def _configure_service_logging() -> None:
    """Plain timestamped lines on stderr, as journald and log collectors expect from a service."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_server_checks(outcome: SiteCheck) -> None:
    """Append the Prefect and MLflow reachability checks to a site check that loaded its config."""
    from medfed.sites.servers import check_servers

    if outcome.config is not None:
        outcome.items.extend(check_servers(outcome.config))


def site_agent(
    site_config: Annotated[Path, typer.Argument(help="Site YAML file.", exists=True, dir_okay=False)],
) -> None:
    """Check the site, then serve the centre's round requests until SIGTERM or SIGINT."""
    _configure_service_logging()
    from medfed.sites.check import check_site, render_check

    outcome = check_site(site_config)
    add_server_checks(outcome)
    config = outcome.config
    if config is not None and config.prefect_api_url is None:
        from medfed.sites.check import CheckItem

        outcome.items.append(CheckItem("site agent", False, "prefect_api_url is not set",
                                       "set prefect_api_url and mlflow_tracking_uri in the site config"))
    if not outcome.ready or config is None:
        render_check(outcome, console)
        logger.error("site config %s is not ready; the agent did not start", site_config)
        raise typer.Exit(1)

    from medfed.sites.agent import run_agent

    outcome_name = run_agent(config)
    logger.info("site %s: agent exited after SIGTERM/SIGINT (last job: %s)", config.site_id, outcome_name)


def site_audit(
    site_config: Annotated[Path, typer.Argument(help="Site YAML file.", exists=True, dir_okay=False)],
    federation: Annotated[str | None, typer.Option(help="Show only entries of this federation id.")] = None,
    last: Annotated[int, typer.Option(help="Show at most this many of the latest entries; 0 shows all.")] = 50,
) -> None:
    """Print the site's egress ledger and verify its hash chain; exit 1 when the chain is broken."""
    from medfed.sites.config import load_site_config
    from medfed.sites.ledger import EgressLedger

    config = load_site_config(site_config)
    ledger = EgressLedger.for_state_dir(config.state_dir, config.site_id)
    report = ledger.verify()
    entries = [e for e in ledger.entries() if federation is None or e.federation_id == federation] if report.valid \
        else []
    shown = entries[-last:] if last > 0 else entries
    table = Table(title=f"Egress ledger of site {config.site_id}: {ledger.path}")
    for column in ("seq", "time (UTC)", "federation", "round", "kind", "key", "bytes", "sha256", "entry hash"):
        table.add_column(column)
    for entry in shown:
        table.add_row(str(entry.seq), entry.time[:19], entry.federation_id, str(entry.round), entry.kind,
                      entry.key.removeprefix(f"{entry.federation_id}/"), str(entry.size), entry.sha256[:12],
                      entry.entry_hash[:12])
    console.print(table)
    if len(shown) < len(entries):
        console.print(f"{len(entries) - len(shown)} older entries not shown; use --last 0 to show all.")
    if report.valid:
        console.print(f"[green]Chain valid:[/] {report.entries} entries, latest hash {report.head}")
        results = [e for e in entries if e.kind == "result"]
        if results:
            # A result carries the ledger hash from before its own entry, which cannot contain its own hash.
            console.print(f"Hash last reported to the centre (federation {results[-1].federation_id}): "
                          f"{results[-1].prev_hash}; compare it with the MLflow tag site/{config.site_id}/ledger_head.")
        return
    console.print(f"[red]Chain broken[/] after reading {report.entries} entries:")
    for error in report.errors:
        console.print(f"  {error}")
    raise typer.Exit(1)


def _prefect_api_url(option: str | None) -> str:
    url = option or os.environ.get("PREFECT_API_URL")
    if not url:
        console.print("[red]No Prefect server given:[/] pass --prefect-api-url or set PREFECT_API_URL, "
                      "such as http://prefect.example.org:4200/api")
        raise typer.Exit(2)
    return url


def deploy(
    experiment: Annotated[Path, typer.Argument(help="Experiment YAML file (sites are site ids).", exists=True,
                                               dir_okay=False)],
    prefect_api_url: Annotated[str | None, typer.Option(help="Prefect API URL (default: PREFECT_API_URL).")] = None,
) -> None:
    """Register the site deployments and the central deployment with the Prefect server."""
    _configure_service_logging()
    config = _load_deployed_experiment(experiment)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from medfed.pipelines.deployed import deploy as register_deployments

    with temporary_settings(updates={PREFECT_API_URL: _prefect_api_url(prefect_api_url)}):
        registered = register_deployments(config)
    table = Table(title=f"Deployments of study {config.study}")
    table.add_column("deployment")
    table.add_column("work pool")
    for name, pool in registered.items():
        table.add_row(name, pool)
    console.print(table)
    console.print(f"Start the federation with `medfed run --deployed {experiment}` or "
                  f"`prefect deployment run 'medfed-federation-deployed/{config.study}'` "
                  "(the latter needs a worker on the central pool).")


def _load_deployed_experiment(experiment: Path, overrides: dict | None = None) -> ExperimentConfig:
    from pydantic import ValidationError

    from medfed.pipelines.config import load_experiment

    try:
        config = load_experiment(experiment, overrides)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]Invalid experiment config {experiment}:[/]\n{exc}")
        raise typer.Exit(2) from None
    files = [s for s in config.sites if s.endswith((".yaml", ".yml"))]
    if files:
        console.print(f"[red]In the deployed shape, sites are site ids, not files:[/] {', '.join(files)}")
        raise typer.Exit(2)
    return config


def run_deployed(config: ExperimentConfig, prefect_api_url: str | None = None) -> None:
    """Run the central flow against the Prefect server, with a progress bar, and print the final table."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from medfed.cli import results_table
    from medfed.cli_progress import round_progress_bar
    from medfed.pipelines.deployed import deployed_federation_flow
    from medfed.pipelines.federation import new_federation_id

    tracking_uri = config.tracking_uri()
    if not tracking_uri.startswith(("http://", "https://")):
        console.print(f"[red]The deployed shape needs an MLflow tracking server, got {tracking_uri!r}:[/] "
                      "set tracking.uri in the experiment or MLFLOW_TRACKING_URI to http(s)://...")
        raise typer.Exit(2)
    federation_id = new_federation_id(config.study)
    console.print(f"Federation [bold]{federation_id}[/] (deployed): sites {', '.join(config.sites)}, "
                  f"{config.rounds} rounds, round deadline {config.round_timeout_s:g} s")
    with temporary_settings(updates={PREFECT_API_URL: _prefect_api_url(prefect_api_url)}), \
            round_progress_bar(console, config.rounds, "statistics phase"):
        summary = deployed_federation_flow(config, federation_id=federation_id)
    for record in summary.rounds:
        for site_id, reason in sorted(record.dropped.items()):
            console.print(f"round {record.round}: site {site_id} left out: {reason}")
    rows = {"federated": {
        **{f"site/{s}/{k}": v for s, m in summary.site_metrics.items() for k, v in m.items()},
        **{k: v for k, v in summary.rounds[-1].metrics.items() if k.endswith("_mean")},
    }}
    console.print(results_table(rows, summary.site_ids))
    console.print(f"MLflow run {summary.run_id} in experiment '{config.study}' at {summary.tracking_uri}")
    if summary.registered_version:
        console.print(f"Registered model '{summary.registered_model}' version {summary.registered_version}")


def register(app: typer.Typer, site_app: typer.Typer) -> None:
    """Mount the deployed-shape commands on the main app and its `site` group."""
    site_app.command("agent")(site_agent)
    site_app.command("audit")(site_audit)
    app.command("deploy")(deploy)
