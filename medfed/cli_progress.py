"""The progress bar over rounds that `medfed run` shows in both deployment shapes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def round_progress_bar(console: Console, rounds: int, first_status: str) -> Iterator[None]:
    """Show a bar over `rounds` that each finished round advances, with its headline metric."""
    from medfed.pipelines import progress as round_progress

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("rounds", total=rounds, status=first_status)

        def on_round(event: round_progress.RoundEvent) -> None:
            headline = "dice" if "dice_mean" in event.metrics else "accuracy"  # dice for segmentation
            status = f"{headline}_mean {event.metrics.get(f'{headline}_mean', float('nan')):.3f}"
            if event.dropped:
                status += f", left out: {', '.join(sorted(event.dropped))}"
            bar.update(task, completed=event.round, status=status)

        round_progress.add_listener(on_round)
        try:
            yield
        finally:
            round_progress.remove_listener(on_round)
