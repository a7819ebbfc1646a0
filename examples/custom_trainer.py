"""A custom trainer on orch's SDK (``trainer.command: python ./custom_trainer.py``): take the plans, roll
out on the run's engines, keep a GRPO-RoC batch, hand the figures back. Your framework's gradient step
and weight sync go where the comments say (``orchestrator.worker.weights`` has orch's engine calls)."""

import random
import time

from orchestrator.spec.dataset import read_problems
from orchestrator.worker.protocol import FilterResultMessage, StepResultMessage
from orchestrator.worker.roc import resample_on_correct
from orchestrator.worker.session import TrainerSession
from orchestrator.worker.trainer import step_problems

session = TrainerSession.from_env()
spec, problems, rng = session.spec, read_problems(session.spec.dataset.uri), random.Random(1)
size = spec.rollout.samples_per_prompt
for work in session.work():
    plan, started = work.message, time.monotonic()
    dropped = set(getattr(plan, "dropped_problems", ()))
    if work.kind == "step":
        chosen = [p for _, p in step_problems(problems, plan.step, spec.rollout.prompts_per_step, dropped)]
        done = [t for t in session.rollouts(chosen, samples=2 * size) if not t.infra_failed]  # faults: out
        groups = [[t for t in done if t.problem_id == p.id] for p in chosen]
        batch = [resample_on_correct(group, size, rng) for group in groups if group]
        # ... the gradient step on batch (.kept, .advantages); then load the new weights into the engines
        spent = time.monotonic() - started
        figures = {"rollouts": len(done), "correct": sum(t.correct for t in done), "preemptions": 0}
        tokens = {"generated_tokens": sum(t.response_tokens for t in done)}
        times = {"rollout_seconds": spent, "train_seconds": 0.0, "checkpoint_seconds": 0.0}
        gpus = {"gpu_busy_seconds": spent * spec.rollout.gpus, "gpu_held_seconds": spent * spec.rollout.gpus}
        work.complete(StepResultMessage(**figures, **tokens, **times, **gpus))
    elif work.kind == "checkpoint":  # ... save your weights under plan.checkpoint_uri ...
        work.complete(time.monotonic() - started)
    else:  # filter: how often each active problem is solved now (its int id: its index in the dataset)
        active = {p.id: i for i, p in enumerate(problems) if i not in dropped}
        correct = dict.fromkeys(active.values(), 0)
        for t in session.rollouts([problems[i] for i in active.values()], samples=plan.samples):
            correct[active[t.problem_id]] += int(t.correct and not t.infra_failed)
        spent = time.monotonic() - started
        gpus = {"gpu_busy_seconds": spent * spec.rollout.gpus, "gpu_held_seconds": spent * spec.rollout.gpus}
        work.complete(FilterResultMessage(correct=correct, seconds=spent, **gpus))
