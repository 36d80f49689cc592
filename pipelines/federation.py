"""The central federation: statistics, then rounds of train, validate, aggregate, evaluate.

`run_federation` contains the logic and works with any dispatcher.
`federation_flow` is the Prefect flow of the embedded shape, where every
site runs as a Prefect task in this process.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import torch
from prefect import flow
from pydantic import BaseModel, Field

from medfed import __version__
from medfed.models import build_model, get_spec
from medfed.pipelines import progress
from medfed.pipelines.config import ExperimentConfig
from medfed.pipelines.dispatch import EmbeddedDispatcher, SiteDispatcher, SiteFailure
from medfed.pipelines.model_logging import log_final_model
from medfed.pipelines.plots import accuracy_plot
from medfed.pipelines.strategies import (
    AggregationError,
    SiteTrainingHints,
    SiteUpdate,
    Strategy,
    build_strategy,
)
from medfed.pipelines.strategy_support import (
    local_keys_for,
    publish_server_payloads,
    read_control_variate_change,
    site_training_config,
)
from medfed.pipelines.tracking import RunLogger, flatten, local_artifact_root
from medfed.sites.exchange import ExchangeError, validate_update
from medfed.sites.exchange_store import ExchangeStore, LocalFolderStore, get_state, put_state
from medfed.sites.job import RoundRequest, SiteResult
from medfed.sites.preprocessing import PreprocessingPlan, merge_statistics

logger = logging.getLogger(__name__)

# Drawing the plot costs about 0.3 s (matplotlib, 2-core CPU), more than a
# tabular round, so it is refreshed every few rounds and after the last one.
PLOT_EVERY_ROUNDS = 5
# A site's sample-image PNG is a row of at most 16 small images; anything larger is not one.
MAX_SAMPLE_PNG_BYTES = 4 * 1024 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class QuorumNotMet(RuntimeError):
    """Too few sites returned a valid result for the round to count."""


class RoundRecord(BaseModel):
    round: int
    metrics: dict[str, float]
    included: list[str]
    dropped: dict[str, str] = Field(default_factory=dict)


class FederationSummary(BaseModel):
    federation_id: str
    tracking_uri: str
    experiment_id: str
    run_id: str
    site_ids: list[str]
    rounds: list[RoundRecord]
    site_metrics: dict[str, dict[str, float]] = Field(description="Final global model, per site.")
    model_uri: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    preprocessing: PreprocessingPlan | None = None


def new_federation_id(study: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{study}-{stamp}-{uuid.uuid4().hex[:6]}"


def resolve_model_kwargs(config: ExperimentConfig) -> ExperimentConfig:
    """Fill `in_features` of a tabular model from the feature spec when the config leaves it out."""
    if get_spec(config.model.name).input_kind == "tabular" and "in_features" not in config.model.kwargs:
        kwargs = {**config.model.kwargs, "in_features": config.data.features.num_inputs}
        return config.model_copy(update={"model": config.model.model_copy(update={"kwargs": kwargs})})
    return config


def check_model_fits_data(config: ExperimentConfig) -> None:
    """Raise ValueError when the model's input or task does not match the experiment's data kind."""
    spec = get_spec(config.model.name)
    expected_kind = "tabular" if spec.input_kind == "tabular" else "dicom"
    if config.data.kind != expected_kind:
        raise ValueError(
            f"model {spec.name!r} takes {spec.input_kind} input, but data.kind is {config.data.kind!r}; "
            f"set data.kind to {expected_kind!r} or choose a {config.data.kind} model"
        )
    if config.data.kind == "dicom":
        data_task = config.data.options.get("task", "classification")
        model_task = "segmentation" if spec.task == "segmentation" else "classification"
        if data_task != model_task:
            raise ValueError(
                f"model {spec.name!r} does {spec.task}, but data.options.task is {data_task!r}; "
                f"set data.options.task to {model_task!r}"
            )


def initial_state(config: ExperimentConfig) -> dict[str, torch.Tensor]:
    """Build the round-0 global model from the experiment seed, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(config.model.name, **config.model.kwargs)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def run_federation(
    config: ExperimentConfig,
    dispatcher: SiteDispatcher,
    store: ExchangeStore,
    *,
    federation_id: str,
    tracking_uri: str,
    artifact_root: Path | None,
) -> FederationSummary:
    """Run every phase of a federation and record it in one MLflow run.

    TODO: resume after a crash. Every round's global model is already in the
    exchange store and in MLflow, but there is no command yet that restarts a
    federation from its last finished round.
    """
    config = resolve_model_kwargs(config)
    check_model_fits_data(config)
    strategy = build_strategy(config.strategy)
    # Log every strategy option with its default filled in, not only those the YAML sets.
    config = config.model_copy(update={"strategy": strategy.config.model_dump(mode="json")})
    site_ids = dispatcher.site_ids
    tracker = RunLogger.start(
        tracking_uri, config.study, run_name=federation_id, artifact_root=artifact_root,
        tags={"medfed.kind": "federated", "medfed.federation_id": federation_id,
              "medfed.version": __version__, "medfed.comparison": federation_id},
    )
    # Site config paths are local to the researcher's machine, so the run records site ids instead.
    params = flatten(config.model_dump(mode="json", exclude={"sites"}))
    tracker.log_params({**params, "sites": json.dumps(site_ids), "federation_id": federation_id})
    try:
        summary = _run_rounds(config, strategy, dispatcher, store, tracker, federation_id, site_ids)
    except BaseException as exc:
        tracker.set_tags({"medfed.error": f"{type(exc).__name__}: {exc}"[:5000]})
        tracker.end("FAILED" if isinstance(exc, Exception) else "KILLED")
        raise
    registered = config.tracking.registered_model or config.study
    info = log_final_model(tracking_uri, tracker.run_id, summary.pop("state"), config.model,
                           summary["preprocessing"], registered, data=config.data)
    tracker.end("FINISHED")
    run = tracker.client.get_run(tracker.run_id)
    return FederationSummary(
        federation_id=federation_id, tracking_uri=tracking_uri, experiment_id=run.info.experiment_id,
        run_id=tracker.run_id, site_ids=site_ids, model_uri=info.model_uri, registered_model=registered,
        registered_version=str(info.registered_model_version) if info.registered_model_version else None,
        **summary,
    )


def _run_rounds(
    config: ExperimentConfig,
    strategy: Strategy,
    dispatcher: SiteDispatcher,
    store: ExchangeStore,
    tracker: RunLogger,
    federation_id: str,
    site_ids: list[str],
) -> dict:
    hints = strategy.site_hints()
    base = RoundRequest(
        federation_id=federation_id, round=0, phase="statistics", model=config.model, data=config.data,
        training=site_training_config(config.training, hints), seed=config.seed,
    )
    local_keys = local_keys_for(config.model, hints)

    # Phase 1: contract validation and federated preprocessing statistics.
    outcomes = dispatcher.dispatch({s: base for s in site_ids}, config.round_timeout_s)
    results, dropped = _split_outcomes(outcomes)
    _require_quorum(config, results, dropped, "statistics")
    _ledger_heads(tracker, results)
    for site_id, result in sorted(results.items()):
        report = result.contract_report
        if report is not None:
            tracker.log_contract_report(site_id, report)
            tracker.log_params({
                f"site/{site_id}/contract": f"{report.contract} {report.contract_version}",
                f"site/{site_id}/data_fingerprint": report.fingerprint or "",
                f"site/{site_id}/rows_kept": str(report.rows_kept),
            })
    _log_sample_images(tracker, store, results, federation_id)
    reports = [r.contract_report for r in results.values() if r.contract_report is not None]
    if reports:
        tracker.log_params({"contract.name": reports[0].contract, "contract.version": reports[0].contract_version})
    plan = merge_statistics([r.statistics for r in results.values() if r.statistics], config.data.features)
    tracker.log_json(plan.model_dump(mode="json"), "preprocessing/plan.json")

    # Phase 2: rounds.
    plot_metric = "dice" if get_spec(config.model.name).task == "segmentation" else "accuracy"
    global_state = initial_state(config)
    global_key = _publish_global(store, federation_id, 0, global_state, config)
    history: list[dict[str, float]] = []
    records: list[RoundRecord] = []
    site_metrics: dict[str, dict[str, float]] = {}
    for round_number in range(1, config.rounds + 1):
        control_variate_key = publish_server_payloads(
            store, strategy, federation_id=federation_id, round_number=round_number, model_name=config.model.name,
        )
        train_request = base.model_copy(update={
            "round": round_number, "phase": "train", "global_model": global_key, "preprocessing": plan,
            "control_variate": control_variate_key,
        })
        round_sites = strategy.select_sites(round_number, site_ids)
        outcomes = dispatcher.dispatch({s: train_request for s in round_sites}, config.round_timeout_s)
        results, dropped = _split_outcomes(outcomes)
        accepted: list[str] = []
        updates = _valid_updates(results, dropped, accepted, store, global_state, config, federation_id,
                                 round_number, local_keys=local_keys, hints=hints)
        aggregation_error: AggregationError | None = None
        try:
            candidate = strategy.aggregate(global_state, updates)
        except AggregationError as exc:
            # For example every accepted site reported zero examples, or too few
            # sites for a robust strategy (Krum needs 2f + 3).
            candidate, aggregation_error = None, exc
        _require_quorum(config, {s: results[s] for s in accepted}, dropped, f"round {round_number}",
                        asked=len(round_sites))
        if candidate is None:
            raise QuorumNotMet(f"round {round_number}: {strategy.name} could not aggregate: {aggregation_error}")
        global_state = candidate
        global_key = _publish_global(store, federation_id, round_number, global_state, config)

        eval_request = train_request.model_copy(update={"phase": "evaluate", "global_model": global_key})
        eval_outcomes = dispatcher.dispatch({s: eval_request for s in site_ids}, config.round_timeout_s)
        evaluations, eval_failures = _split_outcomes(eval_outcomes)
        for site_id, reason in eval_failures.items():
            dropped.setdefault(site_id, f"evaluation failed: {reason}")
        metrics = _round_metrics(site_ids, results, accepted, evaluations)
        site_metrics = {s: dict(r.metrics) for s, r in evaluations.items()}

        tracker.log_metrics(metrics, step=round_number)
        if config.tracking.log_round_models:
            _log_global_artifacts(tracker, store, global_key)
        ledger_heads = _ledger_heads(tracker, results, evaluations)
        tracker.log_json({"round": round_number, "included": accepted, "dropped": dropped,
                          "updates_sha256": {s: results[s].update_sha256 for s in accepted},
                          "ledger_heads": ledger_heads},
                         f"rounds/round_{round_number:04d}.json")
        history.append(metrics)
        if round_number % PLOT_EVERY_ROUNDS == 0 or round_number == config.rounds:
            tracker.log_bytes(accuracy_plot(history, site_ids, metric=plot_metric),
                              f"plots/{plot_metric}_by_round.png")
        for site_id, reason in sorted(dropped.items()):
            logger.warning("round %d: site %s left out: %s", round_number, site_id, reason)
        records.append(RoundRecord(round=round_number, metrics=metrics, included=accepted, dropped=dropped))
        progress.publish(progress.RoundEvent(federation_id, round_number, config.rounds, metrics, dropped))
        logger.info("round %d/%d done: %s_mean=%.4f, %d site(s) aggregated", round_number, config.rounds,
                    plot_metric, metrics.get(f"{plot_metric}_mean", float("nan")), len(accepted))

    # Phase 3 (personalisation): each site fine-tunes the final model and reports before and after.
    if hints.fine_tune_steps > 0:
        tune_request = base.model_copy(update={
            "round": config.rounds, "phase": "fine_tune", "global_model": global_key, "preprocessing": plan,
        })
        tuned, tune_failures = _split_outcomes(dispatcher.dispatch({s: tune_request for s in site_ids},
                                                                   config.round_timeout_s))
        for site_id, reason in sorted(tune_failures.items()):
            logger.warning("fine-tuning: site %s left out: %s", site_id, reason)
        tracker.log_metrics({f"site/{s}/{name}": value for s, r in tuned.items() for name, value in r.metrics.items()},
                            step=config.rounds)
        for site_id, result in tuned.items():
            site_metrics.setdefault(site_id, {}).update(result.metrics)

    return {"rounds": records, "site_metrics": site_metrics, "preprocessing": plan, "state": global_state}


def _log_sample_images(
    tracker: RunLogger, store: ExchangeStore, results: dict[str, SiteResult], federation_id: str
) -> None:
    """Copy each site's sample-image PNG from the exchange store to the run, after checking it is a PNG.

    Only a site whose dataset is declared synthetic sends one. The site
    decides, because no request names a site or a series to send images of.
    """
    for site_id, result in sorted(results.items()):
        if result.sample_images is None:
            continue
        expected_key = f"{federation_id}/statistics/samples/{site_id}.png"
        if result.sample_images != expected_key:
            logger.warning("site %s: sample images ignored, store key %r is not %r", site_id,
                           result.sample_images, expected_key)
            continue
        data = store.get(result.sample_images)
        if not data.startswith(PNG_SIGNATURE) or len(data) > MAX_SAMPLE_PNG_BYTES:
            logger.warning("site %s: sample images ignored, %d bytes that are not a PNG of at most %d bytes",
                           site_id, len(data), MAX_SAMPLE_PNG_BYTES)
            continue
        tracker.log_bytes(data, f"sites/{site_id}/sample_images.png")


def _ledger_heads(tracker: RunLogger, *phases: dict[str, SiteResult]) -> dict[str, str]:
    """Tag the run with each site's latest egress-ledger hash (deployed shape), so both sides can compare."""
    heads: dict[str, str] = {}
    for results in phases:
        heads.update({s: r.ledger_head for s, r in results.items() if r.ledger_head})
    if heads:
        tracker.set_tags({f"site/{s}/ledger_head": h for s, h in sorted(heads.items())})
    return heads


def _split_outcomes(outcomes: dict[str, SiteResult | SiteFailure]) -> tuple[dict[str, SiteResult], dict[str, str]]:
    results = {s: o for s, o in outcomes.items() if isinstance(o, SiteResult)}
    failures = {s: o.reason for s, o in outcomes.items() if isinstance(o, SiteFailure)}
    return results, failures


def _require_quorum(
    config: ExperimentConfig, results: dict, dropped: dict[str, str], phase: str, *, asked: int | None = None
) -> None:
    """Raise QuorumNotMet when fewer than min_sites results are valid, or fewer than `asked` sites if lower.

    `asked` is the number of sites the strategy chose for the round, so a
    cyclic round, which asks one site, needs only that one.
    """
    required = config.min_sites if asked is None else min(config.min_sites, asked)
    if len(results) < required:
        reasons = "; ".join(f"{s}: {r}" for s, r in sorted(dropped.items())) or "no site answered"
        raise QuorumNotMet(
            f"{phase}: {len(results)} site(s) returned a valid result, fewer than the {required} required "
            f"(min_sites={config.min_sites}, {asked if asked is not None else 'all'} asked) ({reasons})"
        )


def _valid_updates(
    results: dict[str, SiteResult],
    dropped: dict[str, str],
    accepted: list[str],
    store: ExchangeStore,
    global_state: dict[str, torch.Tensor],
    config: ExperimentConfig,
    federation_id: str,
    round_number: int,
    *,
    local_keys: frozenset[str] = frozenset(),
    hints: SiteTrainingHints | None = None,
) -> Iterator[SiteUpdate]:
    """Load and check each update, one at a time; a rejected one is recorded in `dropped`."""
    for site_id in sorted(results):
        result = results[site_id]
        try:
            if result.update is None:
                raise ExchangeError("result names no update", site_id=site_id)
            manifest, tensors = get_state(store, result.update, site_id=site_id)
            if manifest.payload_sha256 != result.update_sha256:
                raise ExchangeError("update sha256 differs from the one the site reported", site_id=site_id)
            validate_update(manifest, tensors, reference=global_state, federation_id=federation_id,
                            round_number=round_number, site_id=site_id, max_norm=config.max_update_norm,
                            allow_missing=local_keys)
            control_variate_change = read_control_variate_change(
                store, result, global_state=global_state, federation_id=federation_id,
                round_number=round_number, hints=hints or SiteTrainingHints(),
            )
        except (ExchangeError, FileNotFoundError) as exc:
            dropped[site_id] = f"update rejected: {exc}"
            continue
        accepted.append(site_id)
        yield SiteUpdate(site_id=site_id, num_examples=manifest.num_examples, tensors=tensors,
                         metrics=manifest.metrics, control_variate_delta=control_variate_change)


def _round_metrics(
    site_ids: list[str],
    train_results: dict[str, SiteResult],
    accepted: list[str],
    evaluations: dict[str, SiteResult],
) -> dict[str, float]:
    metrics: dict[str, float] = {"sites_aggregated": float(len(accepted))}
    for site_id in site_ids:
        metrics[f"site/{site_id}/included"] = 1.0 if site_id in accepted else 0.0
        if site_id in train_results:
            metrics[f"site/{site_id}/num_examples"] = float(train_results[site_id].num_examples)
            for name, value in train_results[site_id].metrics.items():
                metrics[f"site/{site_id}/{name}"] = value
        if site_id in evaluations:
            for name, value in evaluations[site_id].metrics.items():
                # num_examples names the training split; the test split's size is test_examples.
                label = "test_examples" if name == "num_examples" else name
                metrics[f"site/{site_id}/{label}"] = value
    for name in ("accuracy", "auc", "dice", "loss"):
        values = [r.metrics[name] for r in evaluations.values() if name in r.metrics]
        if values:
            metrics[f"{name}_mean"] = sum(values) / len(values)
        weighted = [(r.metrics[name], r.metrics.get("num_examples", 0.0)) for r in evaluations.values()
                    if name in r.metrics]
        total = sum(w for _, w in weighted)
        if total > 0:
            metrics[f"{name}_weighted"] = sum(v * w for v, w in weighted) / total
    return metrics


def _publish_global(
    store: ExchangeStore, federation_id: str, round_number: int, state: dict[str, torch.Tensor],
    config: ExperimentConfig,
) -> str:
    key, _, _ = put_state(store, f"{federation_id}/round_{round_number:04d}/global", state,
                          kind="global_model", federation_id=federation_id, round_number=round_number,
                          model_name=config.model.name)
    return key


def _log_global_artifacts(tracker: RunLogger, store: ExchangeStore, manifest_key: str) -> None:
    folder = f"models/{Path(manifest_key).parent.name}"
    tracker.log_bytes(store.get(manifest_key), f"{folder}/global.json")
    payload_key = str(Path(manifest_key).with_suffix(".safetensors"))
    tracker.log_bytes(store.get(payload_key), f"{folder}/global.safetensors")


@flow(name="medfed-federation", persist_result=False, log_prints=False)
def federation_flow(config: ExperimentConfig, federation_id: str | None = None) -> FederationSummary:
    """Run a federation in the embedded shape: every site is a Prefect task in this process."""
    federation_id = federation_id or new_federation_id(config.study)
    workdir = config.workdir.resolve()
    store = LocalFolderStore(workdir / "exchange")
    dispatcher = EmbeddedDispatcher(config.sites, store)
    tracking_uri = config.tracking_uri()
    return run_federation(
        config, dispatcher, store, federation_id=federation_id, tracking_uri=tracking_uri,
        artifact_root=local_artifact_root(tracking_uri, workdir),
    )
