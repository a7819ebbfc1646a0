"""The SQL side of admission, on SQLite and PostgreSQL: queues, the fenced admission lease, waits,
preemptions in flight and the shared clock."""

from __future__ import annotations

import pytest

from orchestrator.errors import ConflictError, NotFound, SpecError
from orchestrator.records import PreemptionRecord, RunPatch, WaitRecord
from orchestrator.spec import RunSpec
from orchestrator.spec.queues import QueueSpec, QuotaSpec
from orchestrator.state.admission import AdmissionWrite
from orchestrator.state.store import Store
from tests.conftest import spec_data

NOW = 1_000_000.0


def queue(name: str, nominal: int = 8, **fields: object) -> QueueSpec:
    return QueueSpec(name=name, quotas=[QuotaSpec(pool="gpu", nominal=nominal)], **fields)


def a_run(store: Store, queue_name: str = "default") -> str:
    data = spec_data()
    data["scheduling"] = {"queue": queue_name}
    return store.create_run(RunSpec.model_validate(data)).id


def test_applying_queues_says_which_were_created_updated_or_unchanged(store: Store) -> None:
    assert store.apply_queues([queue("a"), queue("b")]) == {"a": "created", "b": "created"}
    assert store.apply_queues([queue("a"), queue("b", nominal=16)]) == {"a": "unchanged", "b": "updated"}
    assert [(q.name, q.nominal("gpu")) for q in store.queues()] == [("a", 8), ("b", 16)]


def test_a_queue_with_unfinished_runs_cannot_be_deleted(store: Store) -> None:
    store.apply_queues([queue("a"), queue("b")])
    run_id = a_run(store, "a")
    with pytest.raises(ConflictError, match=run_id):
        store.delete_queue("a")
    store.delete_queue("b")
    assert [q.name for q in store.queues()] == ["a"]
    with pytest.raises(NotFound):
        store.delete_queue("b")


def test_one_controller_holds_the_admission_lease_until_it_lapses_and_the_next_gets_a_new_epoch(
    store: Store,
) -> None:
    first = store.acquire_admission("one", 10, now=NOW)
    assert first is not None
    assert store.acquire_admission("two", 10, now=NOW + 5) is None
    assert store.acquire_admission("one", 10, now=NOW + 5) == first  # renewed, same epoch
    second = store.acquire_admission("two", 10, now=NOW + 16)
    assert second == first + 1


def test_a_controller_whose_lease_lapsed_commits_nothing(store: Store) -> None:
    run_id = a_run(store)
    run = store.get_run(run_id)
    epoch = store.acquire_admission("one", 10, now=NOW)
    assert epoch is not None
    assert store.acquire_admission("two", 10, now=NOW + 11) is not None
    write = AdmissionWrite(
        patches=[RunPatch(run_id, run.version, run={"admitted_at": NOW})],
        waits=[WaitRecord(run_id, "default", 1, "why", NOW)],
    )
    with pytest.raises(ConflictError, match="lease lost"):
        store.commit_admission("one", epoch, write, now=NOW + 11)
    assert store.get_run(run_id).admitted_at is None
    assert store.waits() == {}


def test_one_stale_run_in_an_admission_rolls_back_the_whole_pass(store: Store) -> None:
    first, second = a_run(store), a_run(store)
    runs = {run_id: store.get_run(run_id) for run_id in (first, second)}
    epoch = store.acquire_admission("one", 10, now=NOW)
    assert epoch is not None
    store.apply(RunPatch(second, runs[second].version, run={"message": "changed meanwhile"}))
    write = AdmissionWrite(
        patches=[RunPatch(run_id, run.version, run={"admitted_at": NOW}) for run_id, run in runs.items()],
        preemptions=[PreemptionRecord(first, second, "because", NOW)],
    )
    with pytest.raises(ConflictError):
        store.commit_admission("one", epoch, write, now=NOW)
    assert store.get_run(first).admitted_at is None
    assert store.preemptions() == {}


def test_waits_are_kept_per_run_and_dropped_once_a_run_stops_waiting(store: Store) -> None:
    first, second = a_run(store), a_run(store)
    epoch = store.acquire_admission("one", 10, now=NOW)
    assert epoch is not None
    waits = [WaitRecord(first, "default", 1, "quota", NOW), WaitRecord(second, "default", 2, "quota", NOW)]
    store.commit_admission("one", epoch, AdmissionWrite(waits=waits), now=NOW)
    later = [WaitRecord(second, "default", 1, "GPUs", NOW + 5)]
    store.commit_admission("one", epoch, AdmissionWrite(waits=later), now=NOW + 1)
    assert store.waits() == {second: WaitRecord(second, "default", 1, "GPUs", NOW)}  # since: first seen


def test_a_preemption_is_cleared_by_the_victims_own_patch(store: Store) -> None:
    victim, by = a_run(store), a_run(store)
    epoch = store.acquire_admission("one", 10, now=NOW)
    assert epoch is not None
    record = PreemptionRecord(victim, by, "needs 8 GPUs", NOW)
    store.commit_admission("one", epoch, AdmissionWrite(preemptions=[record]), now=NOW)
    assert store.preemptions() == {victim: record}
    run = store.get_run(victim)
    store.apply(RunPatch(victim, run.version, clear_preemption=True))
    assert store.preemptions() == {}


def test_queue_usage_is_stored_with_the_time_it_was_computed_at(store: Store) -> None:
    assert store.queue_usage() == ({}, None)
    epoch = store.acquire_admission("one", 10, now=NOW)
    assert epoch is not None
    write = AdmissionWrite(usage={("a", "gpu"): 3.5}, usage_at=42.0)
    store.commit_admission("one", epoch, write, now=NOW)
    assert store.queue_usage() == ({("a", "gpu"): 3.5}, 42.0)


def test_the_shared_clock_only_moves_forward(store: Store) -> None:
    assert store.clock("sim") == 0.0
    assert store.advance_clock("sim", 30.0) == 30.0
    assert store.advance_clock("sim", 10.0) == 30.0
    assert store.clock("sim") == 30.0


def test_a_run_naming_a_queue_nobody_applied_is_refused_and_nothing_is_stored(store: Store) -> None:
    before = store.row_counts()
    with pytest.raises(SpecError, match=r"scheduling.queue: unknown queue 'team-x'.*orch queues apply"):
        a_run(store, "team-x")
    assert store.row_counts() == before
    a_run(store, "default")  # the implicit queue, while none is applied
    store.apply_queues([queue("team-x")])
    a_run(store, "team-x")
    with pytest.raises(SpecError, match="the queues are team-x"):
        a_run(store, "default")


def test_a_pass_for_some_runs_only_leaves_the_other_runs_waits_alone(store: Store) -> None:
    mine, other = a_run(store), a_run(store)
    epoch = store.acquire_admission("one", 10, now=NOW)
    assert epoch is not None
    both = [WaitRecord(mine, "default", 2, "GPUs", NOW), WaitRecord(other, "default", 1, "GPUs", NOW)]
    store.commit_admission("one", epoch, AdmissionWrite(waits=both), now=NOW)
    store.commit_admission("one", epoch, AdmissionWrite(waits=[], scope=frozenset({mine})), now=NOW)
    assert set(store.waits()) == {other}
