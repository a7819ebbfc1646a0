"""A scripted trainer for the Ray backend's end-to-end test, built on ``TrainerSession``.

It answers step, checkpoint and filter plans with plausible outcomes. Before each step it waits for every
engine in ``ORCH_ENGINE_URLS`` to answer ``/health`` (proving it got their URLs) and appends each step it
did to ``$SCRIPTED_TRAINER_LOG`` as ``step <n> <url>...``.
"""

from __future__ import annotations

import os
import time
import urllib.request

from orchestrator.core.work import FilterOutcome, StepOutcome
from orchestrator.worker.session import TrainerSession


def healthy(url: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"engine {url} never became healthy")
        time.sleep(0.2)


def main() -> None:
    session = TrainerSession.from_env()
    log = os.environ.get("SCRIPTED_TRAINER_LOG")
    for work in session.work(poll_s=0.05):
        message = work.message
        if work.kind == "step":
            for url in session.engine_urls:
                healthy(url)
            rollouts = session.spec.rollout.prompts_per_step * session.spec.rollout.samples_per_prompt
            work.complete(StepOutcome(rollouts, 100 * rollouts, 0.5, 0.2, 0.0, 0, rollouts // 2, 1.0, 1.0))
            if log:
                with open(log, "a") as file:
                    file.write(f"step {message.step} {' '.join(session.engine_urls)}\n")  # type: ignore[union-attr]
        elif work.kind == "checkpoint":
            work.complete(0.1)
        else:
            work.complete(FilterOutcome({}, 0.1, 0.1, 0.1))


if __name__ == "__main__":
    main()
