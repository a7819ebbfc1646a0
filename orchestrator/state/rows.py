"""SQL rows to the frozen records the rest of orch reads, and GPU samples to and from JSON columns."""

from __future__ import annotations

from dataclasses import asdict, fields, replace
from typing import Any, TypeVar

from orchestrator.records import GpuSample, Phase, ProcessMemory, Run, Stage, Step, Workload, WorkloadStatus
from orchestrator.state.models import RunRow, StageRow, StepRow, WorkloadRow

__all__ = [
    "run_record",
    "sample_from_json",
    "sample_json",
    "stage_record",
    "step_record",
    "to_record",
    "unassigned",
    "workload_record",
]

R = TypeVar("R")


def to_record(record_type: type[R], row: object, **converted: object) -> R:
    """Copy a row's columns into the frozen record of the same field names."""
    values = {f.name: getattr(row, f.name) for f in fields(record_type) if f.name not in converted}  # type: ignore[arg-type]
    return record_type(**values, **converted)


def sample_json(sample: GpuSample) -> dict[str, Any]:
    """A sample as a JSON column holds it."""
    return asdict(sample)


def sample_from_json(data: dict[str, Any]) -> GpuSample:
    """A sample from its JSON column; fields an older orch did not write take their defaults."""
    values = dict(data)
    values["processes"] = tuple(ProcessMemory(**p) for p in values.get("processes") or ())
    values["throttle_reasons"] = tuple(values.get("throttle_reasons") or ())
    known = {f.name for f in fields(GpuSample)}
    return GpuSample(**{k: v for k, v in values.items() if k in known})


def unassigned(sample: GpuSample) -> GpuSample:
    """The sample without its run and role (the run has ended)."""
    return replace(sample, run="", role="")


def run_record(row: RunRow) -> Run:
    return to_record(Run, row, phase=Phase(row.phase))


def stage_record(row: StageRow) -> Stage:
    return to_record(Stage, row)


def workload_record(row: WorkloadRow) -> Workload:
    return to_record(Workload, row, status=WorkloadStatus(row.status), env=dict(row.env))


def step_record(row: StepRow) -> Step:
    return to_record(Step, row, engines=tuple(row.engines or ()))
