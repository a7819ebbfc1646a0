"""Scheduler metrics, read from SQL at scrape time by a prometheus-client collector."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.records import Checkpoint, Phase, PreemptionRecord, Run
from orchestrator.telemetry.names import SCHEDULER_METRICS

__all__ = ["SchedulerCollector"]


class RunState(Protocol):
    """The part of the store the collector reads."""

    def list_runs(self, *, active_only: bool = False) -> list[Run]: ...

    def checkpoints(self, run_id: str) -> list[Checkpoint]: ...

    def run_idle_seconds(self, run_id: str) -> dict[str, float]: ...

    def preemptions(self) -> dict[str, PreemptionRecord]: ...


class QueueFigures(Protocol):
    """One queue in one pool, as ``orch queues`` shows it (``orchestrator.service.QueueRow``)."""

    @property
    def queue(self) -> str: ...
    @property
    def pool(self) -> str: ...
    @property
    def nominal(self) -> int: ...
    @property
    def borrowing_limit(self) -> int | None: ...
    @property
    def used(self) -> int: ...
    @property
    def borrowed(self) -> int: ...
    @property
    def pending_runs(self) -> int: ...
    @property
    def pending_gpus(self) -> int: ...
    @property
    def admitted(self) -> int: ...


# orch_queue_* gauges labelled queue and pool → the QueueFigures field each one reports.
QUEUE_GAUGES = {
    "orch_queue_nominal_gpus": "nominal",
    "orch_queue_used_gpus": "used",
    "orch_queue_borrowed_gpus": "borrowed",
    "orch_queue_pending_runs": "pending_runs",
    "orch_queue_pending_gpus": "pending_gpus",
    "orch_queue_admitted_runs": "admitted",
}


def _help(name: str) -> str:
    return SCHEDULER_METRICS[name][1]


class SchedulerCollector(Collector):
    """Runs by phase, queue lengths; per queue and pool: quota, GPUs used and borrowed, runs pending and
    admitted (with ``queue_report``); per live run: stage, step, checkpoint age, busy ratio, idle time."""

    def __init__(
        self, store: RunState, queue_report: Callable[[], Sequence[QueueFigures]] | None = None
    ) -> None:
        self.store = store
        self.queue_report = queue_report

    def collect(self) -> Iterator[Metric]:
        runs = self.store.list_runs()
        by_phase = GaugeMetricFamily("orch_runs", _help("orch_runs"), labels=["phase"])
        counts = Counter(run.phase for run in runs)
        for phase in Phase:
            by_phase.add_metric([phase.value], counts.get(phase, 0))
        yield by_phase

        queues = GaugeMetricFamily("orch_queue_length", _help("orch_queue_length"), labels=["queue"])
        waiting = Counter(run.queue for run in runs if run.phase is Phase.PENDING)
        for queue in sorted({run.queue for run in runs}):
            queues.add_metric([queue], waiting.get(queue, 0))
        yield queues
        yield from self._queue_metrics(runs)

        stage = GaugeMetricFamily("orch_run_stage", _help("orch_run_stage"), labels=["run"])
        step = GaugeMetricFamily("orch_run_step", _help("orch_run_step"), labels=["run"])
        age = GaugeMetricFamily(
            "orch_run_checkpoint_age_seconds", _help("orch_run_checkpoint_age_seconds"), labels=["run"]
        )
        busy = GaugeMetricFamily("orch_run_gpu_busy_ratio", _help("orch_run_gpu_busy_ratio"), labels=["run"])
        idle = CounterMetricFamily(
            "orch_run_idle_gpu_seconds", _help("orch_run_idle_gpu_seconds_total"), labels=["run", "role"]
        )
        for run in runs:
            if run.phase.terminal:
                continue
            stage.add_metric([run.id], run.stage_index + 1)
            step.add_metric([run.id], run.steps_done)
            checkpoints = self.store.checkpoints(run.id)
            last = checkpoints[-1].sim_seconds if checkpoints else 0.0
            age.add_metric([run.id], max(0.0, run.sim_seconds - last))
            busy.add_metric([run.id], run.gpu_busy_fraction)
            for role, seconds in sorted(self.store.run_idle_seconds(run.id).items()):
                idle.add_metric([run.id, role], seconds)
        yield from (stage, step, age, busy, idle)

    def _queue_metrics(self, runs: list[Run]) -> Iterator[Metric]:
        if self.queue_report is not None:
            rows = self.queue_report()
            for name, field in QUEUE_GAUGES.items():
                family = GaugeMetricFamily(name, _help(name), labels=["queue", "pool"])
                for row in rows:
                    family.add_metric([row.queue, row.pool], getattr(row, field))
                yield family
            limit = GaugeMetricFamily(
                "orch_queue_borrowing_limit_gpus",
                _help("orch_queue_borrowing_limit_gpus"),
                labels=["queue", "pool"],
            )
            for row in rows:
                if row.borrowing_limit is not None:  # no series: no limit
                    limit.add_metric([row.queue, row.pool], row.borrowing_limit)
            yield limit
        queue_of = {run.id: run.queue for run in runs}
        stopping = Counter(queue_of.get(victim, "") for victim in self.store.preemptions())
        preempting = GaugeMetricFamily(
            "orch_queue_preemptions_in_flight", _help("orch_queue_preemptions_in_flight"), labels=["queue"]
        )
        for queue in sorted({run.queue for run in runs if not run.phase.terminal} | set(stopping)):
            preempting.add_metric([queue], stopping.get(queue, 0))
        yield preempting
