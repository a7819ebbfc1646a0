"""Which run and role a GPU sample belongs to, when its source could not tell (a node agent)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from orchestrator.records import GpuSample, Workload

__all__ = ["attribute_samples"]


def attribute_samples(samples: Sequence[GpuSample], live: Sequence[Workload]) -> list[GpuSample]:
    """Label unlabelled samples with the run, role and pool holding GPUs on their node.

    Only when a single (run, role) holds GPUs there: a node shared by several gangs stays unattributed
    rather than guessed (per-GPU attribution needs the device plugin's GPU-to-pod mapping).
    """
    holders: dict[str, set[tuple[str, str, str]]] = {}
    for workload in live:
        if workload.gpus > 0:
            holders.setdefault(workload.node, set()).add((workload.run_id, workload.role, workload.pool))
    labelled = []
    for sample in samples:
        owners = holders.get(sample.node, set())
        if not sample.run and len(owners) == 1:
            run, role, pool = next(iter(owners))
            sample = replace(sample, run=run, role=role, pool=sample.pool or pool)
        labelled.append(sample)
    return labelled
