"""The controller's clock: wall time on a real cluster; on the simulated pool, one virtual clock in SQL
that every run shares, so runs overlap, wait in queues and are preempted on one time line."""

from __future__ import annotations

import time
from typing import Protocol

from orchestrator.state.store import Store

__all__ = ["Clock", "SharedVirtualClock", "WallClock"]


class Clock(Protocol):
    virtual: bool

    def now(self) -> float: ...

    def advance_to(self, when: float) -> float:
        """Move a virtual clock forward to ``when`` (never back); the time it reads now."""
        ...


class WallClock:
    virtual = False

    def now(self) -> float:
        return time.time()

    def advance_to(self, when: float) -> float:
        return self.now()


class SharedVirtualClock:
    """Virtual seconds kept in SQL (``clocks``): survives a controller restart, shared by its runs.

    It moves only when no run has anything to do before the next run's work finishes (discrete events):
    then it jumps to that moment."""

    virtual = True

    def __init__(self, store: Store, name: str = "sim") -> None:
        self.store = store
        self.name = name

    def now(self) -> float:
        return self.store.clock(self.name)

    def advance_to(self, when: float) -> float:
        return self.store.advance_clock(self.name, when)
