"""``orch submit --wait``: the progress bar, notes on other runs, and where a run stands when it returns."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from orchestrator.records import Phase, Run
from orchestrator.render.output import console, note
from orchestrator.service import OtherRun

__all__ = ["WaitProgress", "note_other_runs", "progress_bar", "say_where_it_stands"]


def _driver(other: OtherRun) -> str:
    return f"driven by {other.controller}" if other.controller else "no controller drives it"


def note_other_runs(others: Sequence[OtherRun], run: Run) -> None:
    """One line naming the unfinished runs this --wait leaves alone (it drives its own run only)."""
    if not others:
        return
    named = ", ".join(f"{o.run.id} ({o.run.phase.value}, {_driver(o)})" for o in others)
    note(f"note: --wait drives {run.id} only; other unfinished runs: {named}; `orch controller` runs them")


def note_gpu_holders(others: Sequence[OtherRun], run: Run) -> None:
    """One line naming the runs whose GPUs this run waits for, and whether anything drives them."""
    holders = [o for o in others if o.gpus]
    named = ", ".join(f"{o.run.id} ({o.gpus} GPUs, {o.run.phase.value}, {_driver(o)})" for o in holders)
    advice = (
        "; `orch controller` drives them, `orch cancel RUN` frees their GPUs"
        if any(o.controller is None for o in holders)
        else ""
    )
    note(f"note: {run.id} waits for GPUs held by {named or 'no run in this database'}{advice}: {run.message}")


def say_where_it_stands(run: Run, total: int) -> None:
    """The run's phase, why it is there, and the commands that take it on."""
    note(f"{run.id}: {run.phase.value} at step {run.steps_done} of {total}: {run.message or '-'}")
    if run.phase in (Phase.SUSPENDED, Phase.FAILED):
        note(
            f"to continue from its last checkpoint: `orch resume {run.id}`, then "
            f"`orch controller --exit-when-idle`; `orch events {run.id}` shows what happened"
        )
    elif run.phase is Phase.CANCELLED:
        note("a cancelled run stays cancelled: submit the spec again to start over")
    elif not run.phase.terminal:
        note(
            "nothing drives it now (its lease is released): `orch controller --exit-when-idle` runs it to "
            f"the end, `orch cancel {run.id}` stops it"
        )


@contextmanager
def progress_bar(
    quiet: bool, out: Console = console, get_time: Callable[[], float] | None = None
) -> Iterator[Progress]:
    """A bar of steps done with the elapsed time and an estimate of the time left; ``quiet``: hidden."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=out,
        disable=quiet,
        get_time=get_time,
    )
    with progress:
        yield progress


class WaitProgress:
    """Shows a waited-for run's progress; names the runs holding its GPUs when it waits for them."""

    def __init__(self, progress: Progress, total: int, others: Callable[[str], Sequence[OtherRun]]) -> None:
        self.progress, self.total, self.others = progress, total, others
        self.task = progress.add_task("starting", total=total)
        self.started = time.monotonic()
        self._noted = ""

    def show(self, current: Run) -> None:
        """Called with the run's state every poll."""
        if current.message.startswith("waiting for GPUs") and current.message != self._noted:
            self._noted = current.message
            note_gpu_holders(self.others(current.id), current)
        self.progress.update(
            self.task,
            completed=current.steps_done,
            description=f"stage {current.stage_index + 1} · step {current.steps_done}/{self.total} · "
            f"GPU busy {current.gpu_busy_fraction:.0%} · {current.phase.value}",
        )

    def finished(self, final: Run) -> str:
        """The line said when the wait ends."""
        return f"{final.id}: {final.phase.value} in {time.monotonic() - self.started:.1f}s wall time"
