"""``examples/custom_trainer.py``, the README's custom trainer on the SDK, as a real process: it takes a
step, a filter and a checkpoint plan from a directory mailbox, rolls out on two fake engines and answers
each with a valid result; closing the mailbox ends it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.core.work import CheckpointPlan, FilterPlan
from orchestrator.worker.protocol import FilterResultMessage, StepResultMessage, load_result
from orchestrator.worker.transport import DirectoryTransport
from tests.test_worker_trainer import ROOT, _post, _spec, _step, engines, weights  # noqa: F401

CUSTOM = ROOT / "examples" / "custom_trainer.py"


def _result(mailbox: DirectoryTransport, key: str, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 120
    while (text := mailbox.result(1, key)) is None:
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, f"no result for {key}"
        time.sleep(0.05)
    return text


def test_the_custom_trainer_answers_step_filter_and_checkpoint_plans(
    tmp_path: Path,
    weights: Path,  # noqa: F811
    engines: list[str],  # noqa: F811
) -> None:
    mailbox = DirectoryTransport(tmp_path / "mailbox")
    mailbox.post_spec(json.dumps(_spec(tmp_path, weights, None).model_dump(mode="json")))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ORCH_MAILBOX_DIR": str(mailbox.directory),
        "ORCH_ENGINE_URLS": ",".join(engines),
    }
    _post(mailbox, _step(1))
    process = subprocess.Popen([sys.executable, str(CUSTOM)], env=env, stderr=subprocess.PIPE)
    try:
        step = load_result(_result(mailbox, "step-1", process), StepResultMessage)
        assert step.rollouts == 3 * 2 * 2 and 0 < step.correct < step.rollouts and step.generated_tokens > 0

        _post(mailbox, FilterPlan("run-1", 1, 1, 1, samples=2, threshold=2, dropped_problems=frozenset({0})))
        solved = load_result(_result(mailbox, "filter-1", process), FilterResultMessage)
        assert sorted(solved.correct) == [1, 2, 3, 4, 5] and all(0 <= n <= 2 for n in solved.correct.values())

        _post(mailbox, CheckpointPlan("run-1", 1, 1, (tmp_path / "ckpt").as_uri()))
        assert json.loads(_result(mailbox, "checkpoint-1", process))["kind"] == "checkpoint"
        mailbox.close()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
