"""The trainer session over the directory mailbox: plans in order, results back atomically, idempotent."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from orchestrator.core.work import CheckpointPlan, FilterOutcome, FilterPlan, StepOutcome, StepPlan
from orchestrator.errors import OrchError
from orchestrator.spec.files import load_spec
from orchestrator.worker.protocol import (
    CheckpointResultMessage,
    FilterResultMessage,
    ProtocolError,
    ProtocolVersionError,
    StepResultMessage,
    dump_message,
    load_result,
    plan_message,
    work_key,
)
from orchestrator.worker.session import TrainerSession
from orchestrator.worker.transport import DirectoryTransport

ROOT = Path(__file__).resolve().parents[1]


def step(n: int, attempt: int = 1) -> StepPlan:
    return StepPlan("run-1", n, 0, attempt, 256, 4, checkpoint_after=False, checkpoint_uri="file:///tmp/c")


def outcome(n: int) -> StepOutcome:
    return StepOutcome(n, 10 * n, 1.0, 2.0, 0.0, 0, n, 3.0, 4.0)


class Controller:
    """The controller's side, as the Ray backend will play it: post a plan, wait for its result."""

    def __init__(self, directory: Path) -> None:
        self.mailbox = DirectoryTransport(directory)

    def post(self, plan: StepPlan | CheckpointPlan | FilterPlan) -> None:
        self.mailbox.post_plan(dump_message(plan_message(plan)))

    def wait(self, plan: StepPlan | CheckpointPlan | FilterPlan, expected: type) -> object:
        deadline = time.monotonic() + 10
        while (text := self.mailbox.result(plan.attempt, work_key(plan))) is None:
            assert time.monotonic() < deadline, f"no result for {work_key(plan)}"
            time.sleep(0.01)
        return load_result(text, expected)


def test_the_trainer_does_each_plan_in_order_and_the_controller_reads_each_result(tmp_path: Path) -> None:
    controller = Controller(tmp_path)
    plans: list[StepPlan | CheckpointPlan | FilterPlan] = [
        step(1),
        step(2),
        CheckpointPlan("run-1", 2, 1, "file:///tmp/c"),
        FilterPlan("run-1", 1, 1, 2, samples=4, threshold=4, dropped_problems=frozenset({3})),
    ]
    outcomes = [outcome(1), outcome(2), 1.5, FilterOutcome({1: 4, 2: 0}, 1.0, 2.0, 3.0)]
    expected = [StepResultMessage, StepResultMessage, CheckpointResultMessage, FilterResultMessage]
    seen: list[object] = []

    def trainer() -> None:
        session = TrainerSession(DirectoryTransport(tmp_path))
        for work, done in zip(session.work(poll_s=0.01), outcomes, strict=False):
            seen.append(work.plan)
            work.complete(done)

    thread = threading.Thread(target=trainer)
    thread.start()
    results = []
    for plan, kind in zip(plans, expected, strict=True):
        controller.post(plan)
        results.append(controller.wait(plan, kind))
    controller.mailbox.close()
    thread.join(10)
    assert not thread.is_alive(), "work() did not end when the mailbox closed"
    assert seen == plans
    assert [r.to_outcome() for r in results] == outcomes  # type: ignore[attr-defined]
    files = sorted(p.name for p in (tmp_path / "results" / "a1").iterdir())
    assert files == ["checkpoint-2.json", "filter-1.json", "step-1.json", "step-2.json"]  # no temp files


def test_a_restarted_trainer_skips_done_work_and_complete_keeps_the_recorded_result(tmp_path: Path) -> None:
    controller = Controller(tmp_path)
    controller.post(step(1))
    first = TrainerSession(DirectoryTransport(tmp_path))
    work = next(first.work(idle_timeout_s=0))
    recorded = work.complete(outcome(1))
    # a second completion (the trainer redoing the step after a crash) returns what was recorded
    assert work.complete(outcome(7)) == recorded
    assert first.result(work.message) == recorded

    restarted = TrainerSession(DirectoryTransport(tmp_path))
    assert list(restarted.work(idle_timeout_s=0.05, poll_s=0.01)) == []  # step 1 is done: not again
    controller.post(step(2))
    again = list(restarted.work(idle_timeout_s=0.05, poll_s=0.01))
    assert [item.plan for item in again] == [step(2)]
    # a new attempt redoes step 1: results are per attempt, like the Kubernetes results ConfigMap
    controller.post(step(1, attempt=2))
    assert [item.plan for item in restarted.work(idle_timeout_s=0.05, poll_s=0.01)] == [step(1, 2)]


def test_complete_refuses_an_outcome_of_another_kind(tmp_path: Path) -> None:
    Controller(tmp_path).post(step(1))
    work = next(TrainerSession(DirectoryTransport(tmp_path)).work(idle_timeout_s=0))
    with pytest.raises(TypeError, match="a step plan is completed with a StepOutcome, not float"):
        work.complete(1.5)


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        (json.dumps({"version": 2, "kind": "step"}), ProtocolVersionError, "version 2, but this orch speaks"),
        (json.dumps({"kind": "step"}), ProtocolVersionError, "no 'version' field"),
        ("{not json", ProtocolError, "not JSON"),
        (json.dumps({"version": 1, "kind": "train"}), ProtocolError, "is invalid"),
        (json.dumps({"version": 1, "kind": "step", "step": 1}), ProtocolError, "run_id: Field required"),
    ],
)
def test_a_bad_plan_file_gives_the_protocols_clear_error(
    tmp_path: Path, text: str, error: type[Exception], match: str
) -> None:
    DirectoryTransport(tmp_path).post_plan(text)
    with pytest.raises(error, match=match):
        next(TrainerSession(DirectoryTransport(tmp_path)).work(idle_timeout_s=0))


def test_from_env_reads_the_mailbox_engines_and_spec(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "examples" / "quickstart.yaml")
    DirectoryTransport(tmp_path).post_spec(json.dumps(spec.model_dump(mode="json")))
    env = {"ORCH_MAILBOX_DIR": str(tmp_path), "ORCH_ENGINE_URLS": "http://127.0.0.1:1, http://127.0.0.1:2"}
    session = TrainerSession.from_env(env)
    assert session.engine_urls == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert session.spec == spec
    with pytest.raises(OrchError, match="ORCH_MAILBOX_DIR is not set"):
        TrainerSession.from_env({})
    with pytest.raises(OrchError, match="no engines to roll out on: set ORCH_ENGINE_URLS"):
        TrainerSession.from_env({"ORCH_MAILBOX_DIR": str(tmp_path)}).rollouts([])


def test_a_result_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mailbox = DirectoryTransport(tmp_path)
    mailbox.put_result(1, "step-1", "old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        mailbox.put_result(1, "step-1", "new")
    assert mailbox.result(1, "step-1") == "old"
    assert [p.name for p in (tmp_path / "results" / "a1").iterdir()] == ["step-1.json"]  # temp file gone
