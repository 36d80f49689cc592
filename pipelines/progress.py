"""Round-by-round progress events for whoever drives a federation (the CLI's progress bar)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RoundEvent:
    federation_id: str
    round: int
    rounds: int
    metrics: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)


Listener = Callable[[RoundEvent], None]
_listeners: list[Listener] = []


def add_listener(listener: Listener) -> None:
    _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def publish(event: RoundEvent) -> None:
    for listener in list(_listeners):
        listener(event)
