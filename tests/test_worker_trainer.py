"""The reference trainer (``orch worker``) end to end without a controller: a directory mailbox, two fake
engine processes, the embedded sandbox and the example learner: weights advance, figures are real."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from orchestrator.core.work import CheckpointPlan, FilterPlan, StepPlan, Work
from orchestrator.errors import OrchError
from orchestrator.spec import RunSpec
from orchestrator.spec.dataset import Problem, read_problems
from orchestrator.spec.files import load_spec
from orchestrator.worker.protocol import dump_message, plan_message
from orchestrator.worker.rollouts import Trajectory
from orchestrator.worker.session import TrainerSession
from orchestrator.worker.trainer import ReferenceTrainer, step_problems
from orchestrator.worker.transport import DirectoryTransport
from orchestrator.worker.weights import LearnerError, reload_request
from tests.conftest import wait_healthy

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "examples" / "datasets" / "arith.jsonl"
LEARNER = f"{sys.executable} {ROOT / 'examples' / 'learner_example.py'}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights-v1"
    path.mkdir()
    (path / "version").write_text("1\n")
    return path


@contextlib.contextmanager
def launched(*served: Path) -> Iterator[list[str]]:
    """One fake engine process per weights directory, serving it; their base URLs."""
    processes, urls = [], []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        for weights_dir in served:
            port = _free_port()
            command = [
                sys.executable, "-m", "orchestrator.testing.fake_engine", "serve", str(weights_dir),
                "--port", str(port), "--max-model-len", "8192", "--fake-answers", str(DATASET),
            ]  # fmt: skip
            processes.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        for process, url in zip(processes, urls, strict=True):
            wait_healthy(process, url)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


@pytest.fixture()
def engines(weights: Path) -> Iterator[list[str]]:
    """Two fake engine processes serving weights version 1."""
    with launched(weights, weights) as urls:
        yield urls


def _spec(
    tmp_path: Path, weights: Path, learner: str | None = LEARNER, *, kind: str = "vllm", **rollout: Any
) -> RunSpec:
    dataset = tmp_path / "problems.jsonl"
    dataset.write_text("".join(DATASET.read_text().splitlines(keepends=True)[:6]))
    body = load_spec(ROOT / "examples" / "quickstart.yaml").model_dump(mode="json")
    body["dataset"] |= {"uri": str(dataset), "problems": 6}
    engine = {"model": str(weights), "kind": kind}
    body["rollout"] |= {"samples_per_prompt": 2, "prompts_per_step": 3, "engine": engine, **rollout}
    body["trainer"]["learner_command"] = learner
    return RunSpec.model_validate(body)


def _served_version(url: str) -> int:
    found = re.search(
        r"^fake_engine_weights_version(?:\{[^}]*\})? (\S+)$", requests.get(url + "/metrics").text, re.M
    )
    assert found, "no weights version on /metrics"
    return int(float(found.group(1)))


def _post(mailbox: DirectoryTransport, plan: Work) -> None:
    mailbox.post_plan(dump_message(plan_message(plan)))


def _step(step: int, *, checkpoint_after: bool = False, uri: str = "file:///nowhere") -> StepPlan:
    return StepPlan("run-1", step, 0, 1, 600, 3, checkpoint_after=checkpoint_after, checkpoint_uri=uri)


def test_two_steps_advance_the_engines_weights_with_real_figures_and_masked_infra_failures(
    tmp_path: Path, weights: Path, engines: list[str]
) -> None:
    mailbox = DirectoryTransport(tmp_path / "mailbox")
    mailbox.post_spec(json.dumps(_spec(tmp_path, weights).model_dump(mode="json")))
    env = {**os.environ, "ORCH_MAILBOX_DIR": str(mailbox.directory), "ORCH_ENGINE_URLS": ",".join(engines)}
    trainer = ReferenceTrainer.from_env(env)
    assert trainer.weights == weights and trainer.work_dir == mailbox.directory / "trainer"
    # the sandbox "loses" every rollout whose sample index is 0 of the first problem: masked, not scored
    real_rollouts = trainer.session.rollouts
    lost: list[Trajectory] = []

    def rollouts(problems: list[Problem], **options: Any) -> list[Trajectory]:
        found = real_rollouts(problems, **options)
        for i, t in enumerate(found):
            if t.problem_id == problems[0].id and t.sample % 2 == 0:
                found[i] = dataclasses.replace(
                    t, infra_reason="tool sandbox: worker died", reward=0.0, correct=False
                )
                lost.append(found[i])
        return found

    trainer.session.rollouts = rollouts  # type: ignore[method-assign]
    checkpoint = tmp_path / "ckpt" / "step-000002"
    for step in (1, 2):
        _post(mailbox, _step(step, checkpoint_after=step == 2, uri=checkpoint.as_uri()))
        trainer.run(idle_timeout_s=0, poll_s=0.01)
        assert [_served_version(url) for url in engines] == [1 + step, 1 + step]

    assert len(trainer.reports) == 2
    for step, report in enumerate(trainer.reports, start=1):
        result = json.loads(mailbox.result(1, f"step-{step}") or "{}")
        outcome = report.outcome
        assert result["rollouts"] == outcome.rollouts == 3 * 2 * 2 - 2  # 3 prompts x 4 samples, 2 masked
        assert result["generated_tokens"] == outcome.generated_tokens > 0
        assert 0 < result["correct"] == outcome.correct < outcome.rollouts
        assert result["rollout_seconds"] > 0 and result["train_seconds"] > 0
        assert report.infra_failed == 2 and report.reasons == {"tool sandbox: worker died": 2}
        # the engines' own figures, over the scored rollouts; the masked ones counted apart
        assert result["infra_masked"] == outcome.infra_masked == 2
        assert result["turns"] == outcome.turns >= outcome.rollouts
        assert result["tool_calls"] == outcome.tool_calls
        assert 0 < outcome.tool_calls < outcome.turns  # a turn that ends in a tool call is followed by one
        assert 0 <= result["tool_errors"] == outcome.tool_errors <= outcome.tool_calls
        assert result["reward_sum"] == outcome.reward_sum == outcome.correct  # reward 1 when correct
        assert result["weights_version"] == outcome.weights_version == step
        assert result["stale_dropped"] == result["stale_regenerated"] == 0
        rows = [json.loads(line) for line in report.batch.read_text().splitlines()]
        assert len(rows) == report.kept == 3 * 2  # RoC: samples_per_prompt kept of each group
        assert not {(r["problem_id"], r["sample"]) for r in rows} & {(t.problem_id, t.sample) for t in lost}
        assert all(set(r) >= {"prompt", "response", "reward", "advantage", "tokens"} for r in rows)
        assert all(v == step for r in rows for v in r["weights_versions"])  # generated on that step's weights
        assert report.weights == mailbox.directory / "trainer" / f"step-{step:06d}" / "weights"
    # the step-2 checkpoint holds the weights the engines serve
    assert (checkpoint / "weights" / "version").read_text().strip() == "3"
    assert result["checkpoint_seconds"] > 0


def test_checkpoint_and_filter_plans_and_a_resumed_trainer(
    tmp_path: Path, weights: Path, engines: list[str]
) -> None:
    mailbox = DirectoryTransport(tmp_path / "mailbox")
    mailbox.post_spec(json.dumps(_spec(tmp_path, weights).model_dump(mode="json")))
    session = TrainerSession(mailbox, engine_urls=engines)
    trainer = ReferenceTrainer(session, tmp_path / "work", env={})
    checkpoint = tmp_path / "ckpt" / "step-000000"
    _post(mailbox, CheckpointPlan("run-1", 0, 1, checkpoint.as_uri()))
    trainer.run(idle_timeout_s=0, poll_s=0.01)
    assert json.loads(mailbox.result(1, "checkpoint-0") or "{}")["seconds"] >= 0
    assert (checkpoint / "weights" / "version").read_text().strip() == "1"
    # filter: per int id (index in the dataset file), the correct samples; dropped problems are skipped
    _post(mailbox, FilterPlan("run-1", 1, 1, 0, samples=2, threshold=2, dropped_problems=frozenset({1})))
    trainer.run(idle_timeout_s=0, poll_s=0.01)
    correct = json.loads(mailbox.result(1, "filter-1") or "{}")["correct"]
    assert sorted(int(k) for k in correct) == [0, 2, 3, 4, 5]
    assert all(0 <= v <= 2 for v in correct.values()) and sum(correct.values()) > 0
    # a resumed attempt starts from the checkpoint's weights
    resumed = ReferenceTrainer(session, tmp_path / "work2", env={"ORCH_RESUME_FROM": checkpoint.as_uri()})
    assert resumed.weights == checkpoint / "weights"


def test_a_failing_learner_fails_the_step_with_its_stderr(
    tmp_path: Path, weights: Path, engines: list[str]
) -> None:
    failing = f"{sys.executable} -c \"import sys; sys.exit('out of memory on rank 0')\""
    mailbox = DirectoryTransport(tmp_path / "mailbox")
    mailbox.post_spec(json.dumps(_spec(tmp_path, weights, failing).model_dump(mode="json")))
    trainer = ReferenceTrainer(TrainerSession(mailbox, engine_urls=engines), tmp_path / "work", env={})
    _post(mailbox, _step(1))
    with pytest.raises(LearnerError, match=r"(?s)exited with status 1.*out of memory on rank 0"):
        trainer.run(idle_timeout_s=0, poll_s=0.01)
    assert mailbox.result(1, "step-1") is None  # not recorded: the attempt fails
    assert [_served_version(url) for url in engines] == [1, 1]


def test_step_problems_are_deterministic_skip_dropped_and_wrap() -> None:
    problems = list(read_problems(DATASET)[:5])
    assert [i for i, _ in step_problems(problems, 1, 2)] == [0, 1]
    assert [i for i, _ in step_problems(problems, 3, 2)] == [4, 0]
    assert [i for i, _ in step_problems(problems, 1, 3, frozenset({1}))] == [0, 2, 3]
    with pytest.raises(OrchError, match="every problem"):
        step_problems(problems, 1, 2, frozenset(range(5)))


def test_reload_requests_follow_the_engine_kind(tmp_path: Path) -> None:
    assert reload_request("sglang", tmp_path) == ("/update_weights_from_disk", {"model_path": str(tmp_path)})
    for kind in ("vllm", "command"):
        assert reload_request(kind, tmp_path) == (
            "/collective_rpc",
            {"method": "reload_weights", "kwargs": {"weights_path": str(tmp_path)}},
        )


def test_orch_worker_runs_a_step_from_the_environment(
    tmp_path: Path, weights: Path, engines: list[str]
) -> None:
    mailbox = DirectoryTransport(tmp_path / "mailbox")
    mailbox.post_spec(json.dumps(_spec(tmp_path, weights).model_dump(mode="json")))
    _post(mailbox, _step(1))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ORCH_MAILBOX_DIR": str(mailbox.directory),
        "ORCH_ENGINE_URLS": ",".join(engines),
        "ORCH_WORK_DIR": str(tmp_path / "work"),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "worker", "--idle-timeout", "0"], env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(mailbox.result(1, "step-1") or "{}")["rollouts"] == 12
    assert (tmp_path / "work" / "step-000001" / "weights" / "version").read_text().strip() == "2"
    assert [_served_version(url) for url in engines] == [2, 2]


# ---- staleness --------------------------------------------------------------------------------------


def test_trajectories_from_an_engine_on_older_weights_are_regenerated_after_a_resync(
    tmp_path: Path, weights: Path
) -> None:
    older = tmp_path / "weights-v0"
    older.mkdir()
    (older / "version").write_text("0\n")
    with launched(weights, older) as urls:  # engine 1 came back on older weights
        mailbox = DirectoryTransport(tmp_path / "mailbox")
        mailbox.post_spec(json.dumps(_spec(tmp_path, weights, None).model_dump(mode="json")))
        trainer = ReferenceTrainer(TrainerSession(mailbox, engine_urls=urls), tmp_path / "work", env={})
        report = trainer.step(_step(1))
        assert [_served_version(url) for url in urls] == [1, 1], "the stale engine was re-synced"
    outcome = report.outcome
    assert outcome.stale_regenerated > 0 and outcome.stale_dropped == 0
    assert outcome.rollouts == 12 and outcome.weights_version == 1
    rows = [json.loads(line) for line in report.batch.read_text().splitlines()]
    assert len(rows) == 6 and all(v == 1 for r in rows for v in r["weights_versions"])
    saved = json.loads((report.batch.parent / "report.json").read_text())
    assert saved["stale_regenerated"] == outcome.stale_regenerated and saved["stale_dropped"] == 0


def test_a_trajectory_still_stale_after_regeneration_is_dropped_counted_and_logged(
    tmp_path: Path, weights: Path, engines: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    mailbox = DirectoryTransport(tmp_path / "mailbox")
    mailbox.post_spec(json.dumps(_spec(tmp_path, weights).model_dump(mode="json")))
    trainer = ReferenceTrainer(TrainerSession(mailbox, engine_urls=engines), tmp_path / "work", env={})
    real_rollouts = trainer.session.rollouts
    first = trainer.problems[0].id
    calls: list[dict[str, Any]] = []

    def rollouts(problems: list[Problem], **options: Any) -> list[Trajectory]:
        calls.append(options)
        found = real_rollouts(problems, **options)
        # sample 1 of the first problem always comes from an engine stuck on version 0
        return [
            dataclasses.replace(t, weights_versions=(0,) * len(t.weights_versions))
            if (t.problem_id, t.sample) == (first, 1)
            else t
            for t in found
        ]

    trainer.session.rollouts = rollouts  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="orchestrator.worker.trainer"):
        report = trainer.step(_step(1))
    assert [(p.id, n) for p, n in calls[1]["pairs"]] == [(first, 1)], "only the stale sample is regenerated"
    outcome = report.outcome
    assert (outcome.stale_regenerated, outcome.stale_dropped, outcome.rollouts) == (1, 1, 11)
    rows = [json.loads(line) for line in report.batch.read_text().splitlines()]
    assert (first, 1) not in {(r["problem_id"], r["sample"]) for r in rows}
    assert all(v == 1 for r in rows for v in r["weights_versions"])
    assert "1 regenerated, 1 still stale and dropped" in caplog.text


# ---- colocated engines sleep while the learner runs -----------------------------------------------

PROBING_LEARNER = """
import json, os, sys, urllib.request
from pathlib import Path
states = [
    json.load(urllib.request.urlopen(url + "/is_sleeping"))["is_sleeping"]
    for url in os.environ["PROBE_URLS"].split(",")
]
out = Path(os.environ["ORCH_WEIGHTS_OUT"])
(out / "sleeping.json").write_text(json.dumps(states))
previous = int((Path(os.environ["ORCH_WEIGHTS_IN"]) / "version").read_text())
(out / "version").write_text(str(previous + 1))
"""


def _is_sleeping(url: str) -> bool:
    return bool(requests.get(url + "/is_sleeping", timeout=5).json()["is_sleeping"])


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_only_colocated_engines_sleep_while_the_learner_runs_and_wake_after(
    tmp_path: Path, weights: Path, engines: list[str], kind: str
) -> None:
    learner = tmp_path / "probing_learner.py"
    learner.write_text(PROBING_LEARNER)
    mailbox = DirectoryTransport(tmp_path / "mailbox")
    spec = _spec(tmp_path, weights, f"{sys.executable} {learner}", kind=kind)
    mailbox.post_spec(json.dumps(spec.model_dump(mode="json")))
    env = {"ORCH_COLOCATED_ENGINES": "run-1-engine-1-a1", "PROBE_URLS": ",".join(engines)}
    trainer = ReferenceTrainer(TrainerSession(mailbox, engine_urls=engines), tmp_path / "work", env=env)
    assert trainer.colocated == [engines[1]]
    report = trainer.step(_step(1))
    assert report.weights is not None
    assert json.loads((report.weights / "sleeping.json").read_text()) == [False, True]
    assert [_is_sleeping(url) for url in engines] == [False, False], "woken after the learner"
    assert [_served_version(url) for url in engines] == [2, 2]


def test_a_trainer_without_colocated_engines_puts_none_to_sleep(
    tmp_path: Path, weights: Path, engines: list[str]
) -> None:
    learner = tmp_path / "probing_learner.py"
    learner.write_text(PROBING_LEARNER)
    mailbox = DirectoryTransport(tmp_path / "mailbox")
    mailbox.post_spec(
        json.dumps(_spec(tmp_path, weights, f"{sys.executable} {learner}").model_dump(mode="json"))
    )
    env = {"PROBE_URLS": ",".join(engines)}
    trainer = ReferenceTrainer(TrainerSession(mailbox, engine_urls=engines), tmp_path / "work", env=env)
    report = trainer.step(_step(1))
    assert report.weights is not None
    assert json.loads((report.weights / "sleeping.json").read_text()) == [False, False]
