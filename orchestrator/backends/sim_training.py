"""Simulated training on the simulated pool: rollout phase on simulated engines, then a train phase.

Each step is deterministic in (seed, step), so a step redone after a crash produces the same
numbers. The policy's skill grows with training steps; a problem's chance of being solved is
a logistic function of skill minus its (seeded) difficulty.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.backends.base import ExecutionInterrupted
from orchestrator.backends.sim import SimCluster
from orchestrator.core.work import CheckpointPlan, FilterOutcome, FilterPlan, StepOutcome, StepPlan
from orchestrator.errors import OrchError
from orchestrator.rollout.cost import EngineCost
from orchestrator.rollout.hardware import GPU_TYPES
from orchestrator.rollout.shapes import sample_rollouts
from orchestrator.rollout.simulator import RolloutPhaseResult, simulate_rollout_phase
from orchestrator.spec import RunSpec

__all__ = ["SimTrainer", "StepSimulator"]

# Training runs forward + backward: ~6 × params FLOPs per token (Kaplan et al. 2020, arXiv 2001.08361).
TRAIN_FLOPS_PER_TOKEN_PER_PARAM = 6
# Model FLOPs utilisation of the train phase; large-scale bf16 training typically sustains 35-45%
# (Megatron-LM reports 52% on A100 at its best, Narayanan et al. 2021). Assumption.
TRAIN_MFU = 0.4
# A checkpoint holds bf16 weights plus fp32 master weights and two Adam moments: 2 + 4 + 4 + 4 bytes/param.
CHECKPOINT_BYTES_PER_PARAM = 14
# Sustained write bandwidth per node to the checkpoint store. Assumption.
CHECKPOINT_BYTES_PER_S_PER_NODE = 2e9
# Filter passes are estimated from a simulated sample of at most this many rollouts, scaled up.
FILTER_SAMPLE_ROLLOUTS = 2048


@dataclass
class _Trainer:
    """The simulated state of one trainer gang attempt: which step its model is at."""

    position: int
    outcomes: dict[int, StepOutcome] = field(default_factory=dict)


class StepSimulator:
    """The physics of simulated training, with no cluster: what a step, a checkpoint or a filter costs.

    Shared by the simulated pool's trainer and by scripted trainers in Kubernetes tests.
    """

    def __init__(self) -> None:
        self._difficulty: dict[tuple[int, int], list[float]] = {}

    def difficulties(self, spec: RunSpec) -> list[float]:
        key = (spec.seed, spec.dataset.problems)
        if key not in self._difficulty:
            rng = random.Random(f"difficulty-{spec.seed}")
            self._difficulty[key] = [rng.gauss(0.0, 1.5) for _ in range(spec.dataset.problems)]
        return self._difficulty[key]

    def solve_probability(self, spec: RunSpec, step: int) -> Callable[[int], float]:
        skill = -1.0 + 3.5 * min(1.0, step / max(1, spec.total_steps))
        difficulty = self.difficulties(spec)
        return lambda problem: 1.0 / (1.0 + math.exp(difficulty[problem] - skill))

    def _rollouts(
        self,
        spec: RunSpec,
        seed: str,
        problems: list[int],
        samples: int,
        max_tokens: int,
        max_turns: int,
        step: int,
    ) -> RolloutPhaseResult:
        rng = random.Random(seed)
        shapes = sample_rollouts(
            rng,
            problems,
            samples,
            spec.dataset.prompt_tokens,
            max_tokens,
            max_turns,
            self.solve_probability(spec, step),
        )
        gpu = GPU_TYPES[spec.pools[spec.rollout.pool].gpu_type]
        cost = EngineCost.for_engine(spec.model, gpu, spec.rollout.gpus_per_engine)
        return simulate_rollout_phase(shapes, spec.rollout.engines, cost)

    def _train_seconds(self, spec: RunSpec, tokens: int) -> float:
        gpu = GPU_TYPES[spec.pools[spec.trainer.pool].gpu_type]
        flops = TRAIN_FLOPS_PER_TOKEN_PER_PARAM * spec.model.params_b * 1e9 * tokens
        return flops / (spec.trainer.gpus * gpu.bf16_dense_flops * TRAIN_MFU)

    def checkpoint_seconds(self, spec: RunSpec) -> float:
        nodes = math.ceil(spec.trainer.gpus / spec.pools[spec.trainer.pool].gpus_per_node)
        return (
            CHECKPOINT_BYTES_PER_PARAM * spec.model.params_b * 1e9 / (nodes * CHECKPOINT_BYTES_PER_S_PER_NODE)
        )

    @staticmethod
    def _held_gpus(spec: RunSpec) -> int:
        return spec.trainer.gpus if spec.colocated else spec.trainer.gpus + spec.rollout.gpus

    def step(self, spec: RunSpec, plan: StepPlan) -> StepOutcome:
        """One step: deterministic in (seed, step), so a redone step gives the same numbers."""
        rng = random.Random(f"{spec.seed}-prompts-{plan.step}")
        active = [p for p in range(spec.dataset.problems) if p not in plan.dropped_problems]
        problems = rng.sample(active, min(spec.rollout.prompts_per_step, len(active)))
        phase = self._rollouts(
            spec,
            f"{spec.seed}-rollouts-{plan.step}",
            problems,
            spec.rollout.samples_per_prompt,
            plan.max_response_tokens,
            plan.max_turns,
            plan.step,
        )
        tokens = phase.generated_tokens + phase.rollouts * spec.dataset.prompt_tokens
        train = self._train_seconds(spec, tokens)
        checkpoint = self.checkpoint_seconds(spec) if plan.checkpoint_after else 0.0
        busy = sum(phase.engine_busy_seconds) * spec.rollout.gpus_per_engine + spec.trainer.gpus * train
        return StepOutcome(
            rollouts=phase.rollouts,
            generated_tokens=phase.generated_tokens,
            rollout_seconds=phase.seconds,
            train_seconds=train,
            checkpoint_seconds=checkpoint,
            preemptions=phase.preemptions,
            correct=phase.correct,
            gpu_busy_seconds=busy,
            gpu_held_seconds=self._held_gpus(spec) * (phase.seconds + train + checkpoint),
        )

    def evaluate(self, spec: RunSpec, plan: FilterPlan) -> FilterOutcome:
        """Sample every active problem ``plan.samples`` times; cost estimated from a simulated sample."""
        active = [p for p in range(spec.dataset.problems) if p not in plan.dropped_problems]
        probability = self.solve_probability(spec, plan.step)
        rng = random.Random(f"{spec.seed}-filter-{plan.stage_index}")
        correct = {
            problem: sum(rng.random() < probability(problem) for _ in range(plan.samples))
            for problem in active
        }
        stage = spec.curriculum[plan.stage_index]
        sample = active[: max(1, FILTER_SAMPLE_ROLLOUTS // plan.samples)]
        phase = self._rollouts(
            spec,
            f"{spec.seed}-filter-cost-{plan.stage_index}",
            sample,
            plan.samples,
            stage.max_response_tokens,
            stage.max_turns,
            plan.step,
        )
        scale = len(active) / len(sample)
        seconds = phase.seconds * scale
        busy = sum(phase.engine_busy_seconds) * spec.rollout.gpus_per_engine * scale
        return FilterOutcome(
            correct=correct,
            seconds=seconds,
            gpu_busy_seconds=busy,
            gpu_held_seconds=self._held_gpus(spec) * seconds,
        )


class SimTrainer:
    """Executes steps of runs whose gangs run on a ``SimCluster``; injects the cluster's faults."""

    def __init__(self, cluster: SimCluster, physics: StepSimulator | None = None) -> None:
        self.cluster = cluster
        self.physics = physics or StepSimulator()
        self._trainers: dict[tuple[str, int], _Trainer] = {}
        self.executed: list[tuple[str, int, int]] = []  # (run, attempt, step) actually simulated

    def _trainer(self, run_id: str, attempt: int) -> _Trainer:
        if not self.cluster.gang_running(run_id, attempt):
            raise ExecutionInterrupted(f"run {run_id}: the gang of attempt {attempt} is not running")
        key = (run_id, attempt)
        if key not in self._trainers:
            pods = self.cluster.pods_of(run_id, attempt)
            resume = int(next(p.env["ORCH_RESUME_STEP"] for p in pods if p.role == "trainer"))
            self._trainers[key] = _Trainer(position=resume)
        return self._trainers[key]

    def _inject_fault(self, run_id: str, attempt: int, step: int) -> None:
        fault = self.cluster.due_fault(run_id, step)
        if fault is None:
            return
        trainer = next(p for p in self.cluster.pods_of(run_id, attempt) if p.role == "trainer")
        if fault.kind == "pod_crash":
            self.cluster.crash_pod(trainer.name, "Error: injected crash (exit code 137)")
        else:
            self.cluster.lose_node(trainer.node)
        raise ExecutionInterrupted(f"run {run_id}: injected {fault.kind} before step {step}")

    def execute_step(self, spec: RunSpec, plan: StepPlan) -> StepOutcome:
        trainer = self._trainer(plan.run_id, plan.attempt)
        if trainer.position >= plan.step and plan.step in trainer.outcomes:
            return trainer.outcomes[plan.step]  # done before, not yet recorded: same answer again
        if trainer.position != plan.step - 1:
            raise OrchError(
                f"run {plan.run_id}: trainer of attempt {plan.attempt} is at step {trainer.position}, "
                f"cannot run step {plan.step}"
            )
        self._inject_fault(plan.run_id, plan.attempt, plan.step)
        outcome = self.physics.step(spec, plan)
        trainer.position = plan.step
        trainer.outcomes[plan.step] = outcome
        self.executed.append((plan.run_id, plan.attempt, plan.step))
        return outcome

    def save_checkpoint(self, spec: RunSpec, plan: CheckpointPlan) -> float:
        trainer = self._trainer(plan.run_id, plan.attempt)
        if trainer.position != plan.step:
            raise OrchError(f"run {plan.run_id}: trainer is at step {trainer.position}, not {plan.step}")
        return self.physics.checkpoint_seconds(spec)

    def evaluate_problems(self, spec: RunSpec, plan: FilterPlan) -> FilterOutcome:
        self._trainer(plan.run_id, plan.attempt)
        return self.physics.evaluate(spec, plan)
