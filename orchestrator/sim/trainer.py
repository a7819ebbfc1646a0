"""Simulated training on the simulated pool: rollout phase on simulated engines, then a train phase.

Each step is deterministic in (seed, step), so a step redone after a crash produces the same
numbers. The policy's skill grows with training steps; a problem's chance of being solved is
a logistic function of skill minus its (seeded) difficulty.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.backends.base import ExecutionInterrupted, WorkInProgress
from orchestrator.core.dispatch import KV_BOUNDED, make_dispatcher
from orchestrator.core.feasibility import ACTIVATION_BYTES_PER_TRAINER_GPU, trainer_bytes_per_gpu
from orchestrator.core.work import CheckpointPlan, FilterOutcome, FilterPlan, StepOutcome, StepPlan
from orchestrator.errors import OrchError
from orchestrator.hardware import GPU_TYPES
from orchestrator.sim.cluster import SimCluster
from orchestrator.sim.engine_cost import EngineCost
from orchestrator.sim.pool_telemetry import GpuLoad
from orchestrator.sim.rollout_phase import RolloutPhaseResult, simulate_balanced_phase
from orchestrator.sim.rollout_shapes import sample_rollouts
from orchestrator.spec import RunSpec
from orchestrator.telemetry.rollout_metrics import RolloutMetrics

__all__ = ["SimTrainer", "SimulatedStep", "StepSimulator"]

# Training runs forward + backward: ~6 × params FLOPs per token (Kaplan et al. 2020, arXiv 2001.08361).
TRAIN_FLOPS_PER_TOKEN_PER_PARAM = 6
# Model FLOPs utilisation of the train phase; large-scale bf16 training typically sustains 35-45%
# (Megatron-LM reports 52% on A100 at its best, Narayanan et al. 2021). Assumption.
TRAIN_MFU = 0.4
# A checkpoint holds bf16 weights plus fp32 master weights and two Adam moments: 2 + 4 + 4 + 4 bytes/param.
CHECKPOINT_BYTES_PER_PARAM = 14
# Sustained write bandwidth per node to the checkpoint store. Assumption.
CHECKPOINT_BYTES_PER_S_PER_NODE = 2e9
# A training step keeps the GPUs' kernels running nearly all the time (NVML "utilization" counts any
# kernel running, not FLOPs); assumption.
TRAIN_UTILIZATION = 0.97
# Filter passes are estimated from a simulated sample of at most this many rollouts, scaled up.
FILTER_SAMPLE_ROLLOUTS = 2048


@dataclass(frozen=True)
class SimulatedStep:
    outcome: StepOutcome
    engine_busy_seconds: tuple[float, ...]
    engine_peak_kv_tokens: tuple[int, ...]
    tool_seconds: float = 0.0  # summed over every tool call of the rollout phase
    kv_capacity_tokens: int = 0  # of one engine


@dataclass
class _Trainer:
    """The simulated state of one trainer gang attempt: which step its model is at."""

    position: int
    outcomes: dict[int, StepOutcome] = field(default_factory=dict)


class StepSimulator:
    """The physics of simulated training, with no cluster: what a step, a checkpoint or a filter costs.

    Shared by the simulated pool's trainer and by scripted trainers in Kubernetes tests.
    """

    def __init__(self, metrics: RolloutMetrics | None = None) -> None:
        self.metrics = metrics
        self._difficulty: dict[tuple[int, int], list[float]] = {}
        self.last_tool_seconds = 0.0  # of the last simulated rollout phase
        self.last_kv_capacity = 0
        self.last_queue_peak = 0

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
        engines = spec.rollout.engines
        observe = None if self.metrics is None else self.metrics.observe_decisions
        balanced = simulate_balanced_phase(
            shapes,
            engines,
            cost,
            lambda states: make_dispatcher(
                spec.rollout.dispatch, states, seed=spec.seed, expected_rollouts=len(shapes)
            ),
            max_tokens,
            chunk_tokens=spec.rollout.chunk_tokens if spec.rollout.dispatch in KV_BOUNDED else None,
            on_decisions=observe,
        )
        self.last_queue_peak = balanced.queued_peak
        phase = balanced.result
        self.last_tool_seconds = sum(turn.tool_seconds for shape in shapes for turn in shape.turns)
        self.last_kv_capacity = cost.kv_capacity_tokens
        return phase

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
        return self.simulate(spec, plan).outcome

    def simulate(self, spec: RunSpec, plan: StepPlan) -> SimulatedStep:
        """The step's outcome plus what each engine did (for the simulated telemetry)."""
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
        outcome = StepOutcome(
            rollouts=phase.rollouts,
            generated_tokens=phase.generated_tokens,
            rollout_seconds=phase.seconds,
            train_seconds=train,
            checkpoint_seconds=checkpoint,
            preemptions=phase.preemptions,
            correct=phase.correct,
            gpu_busy_seconds=busy,
            gpu_held_seconds=self._held_gpus(spec) * (phase.seconds + train + checkpoint),
            engine_busy_ratio=tuple(
                busy / phase.seconds if phase.seconds else 0.0 for busy in phase.engine_busy_seconds
            ),
            engine_kv_free_ratio=tuple(1 - peak / self.last_kv_capacity for peak in phase.peak_kv_tokens),
            queue_peak=self.last_queue_peak,
            turns=phase.turns,
            tool_calls=phase.tool_calls,
            reward_sum=float(phase.correct),  # reward 1 for a correct answer, else 0
        )
        return SimulatedStep(
            outcome,
            phase.engine_busy_seconds,
            phase.peak_kv_tokens,
            self.last_tool_seconds,
            self.last_kv_capacity,
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

    def __init__(
        self, cluster: SimCluster, physics: StepSimulator | None = None, *, pace: float = 0.0
    ) -> None:
        """``pace`` > 0 plays each step out in wall time at ``pace`` virtual seconds per wall second
        (telemetry shows its phases as they happen); 0 runs as fast as possible."""
        self.cluster = cluster
        self.physics = physics or StepSimulator()
        self.pace = pace
        self._playing: dict[tuple[str, int, int], tuple[StepOutcome, float]] = {}  # outcome, wall end
        self._trainers: dict[tuple[str, int], _Trainer] = {}
        self._clock: dict[str, float] = {}  # per run: virtual seconds its simulated GPUs have run
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
        key = (plan.run_id, plan.attempt, plan.step)
        if key not in self._playing:
            self._inject_fault(plan.run_id, plan.attempt, plan.step)
            simulated = self.physics.simulate(spec, plan)
            wall_start = time.monotonic()
            self._publish(spec, plan.run_id, plan.attempt, simulated, wall_start)
            self._playing[key] = (simulated.outcome, wall_start + self._wall(simulated.outcome.seconds))
        outcome, ends_at = self._playing[key]
        if time.monotonic() < ends_at:
            raise WorkInProgress(f"run {plan.run_id}: step {plan.step} is still playing out")
        del self._playing[key]
        if self.physics.metrics is not None:
            self.physics.metrics.idle(plan.run_id)
            self.physics.metrics.phase_done(plan.run_id, outcome.engine_busy_ratio, outcome.queue_peak)
        trainer.position = plan.step
        trainer.outcomes[plan.step] = outcome
        self.executed.append((plan.run_id, plan.attempt, plan.step))
        return outcome

    def _wall(self, virtual_seconds: float) -> float:
        return virtual_seconds / self.pace if self.pace > 0 else 0.0

    def _publish(
        self, spec: RunSpec, run_id: str, attempt: int, simulated: SimulatedStep, wall_start: float
    ) -> None:
        """Report the step's rollout, train and checkpoint phases to the pool's telemetry."""
        outcome = simulated.outcome
        pods = self.cluster.pods_of(run_id, attempt)
        trainer_gpus = [(p.node, i) for p in pods if p.role == "trainer" for i in self.cluster.gpus_of(p)]
        engine_gpus = {
            p.index: [(p.node, i) for i in self.cluster.gpus_of(p)] for p in pods if p.role == "engine"
        }
        resident = trainer_bytes_per_gpu(spec)
        weights = spec.model.weight_bytes // spec.rollout.gpus_per_engine
        start = self._clock.get(run_id, 0.0)
        rollout: dict[tuple[str, int], GpuLoad] = {
            gpu: GpuLoad(0.0, resident, "trainer") for gpu in trainer_gpus
        }
        train: dict[tuple[str, int], GpuLoad] = {}
        for engine, gpus in engine_gpus.items():
            busy = (
                simulated.engine_busy_seconds[engine] / outcome.rollout_seconds
                if outcome.rollout_seconds
                else 0
            )
            kv = simulated.engine_peak_kv_tokens[engine] * spec.model.kv_bytes_per_token
            for gpu in gpus:
                rollout[gpu] = GpuLoad(min(1.0, busy), weights + kv // len(gpus), "engine")
                train[gpu] = GpuLoad(0.0, weights, "engine")
        for gpu in trainer_gpus:
            train[gpu] = GpuLoad(TRAIN_UTILIZATION, resident + ACTIVATION_BYTES_PER_TRAINER_GPU, "trainer")
        telemetry = self.cluster.telemetry
        phases = [(outcome.rollout_seconds, rollout), (outcome.train_seconds, train)]
        if outcome.checkpoint_seconds:
            saving = {gpu: GpuLoad(0.05, load.memory_used_bytes, load.role) for gpu, load in train.items()}
            phases.append((outcome.checkpoint_seconds, saving))
        metrics = self.physics.metrics
        if metrics is not None and outcome.rollout_seconds:
            metrics.rollout_phase(
                run_id,
                outcome.rollouts,
                simulated.tool_seconds / outcome.rollout_seconds,
                {
                    str(engine): 1 - peak / simulated.kv_capacity_tokens
                    for engine, peak in enumerate(simulated.engine_peak_kv_tokens)
                },
            )
        offset = 0.0
        for seconds, loads in phases:
            telemetry.record_phase(
                start + offset,
                seconds,
                loads,
                pods,
                shown_at=wall_start + self._wall(offset),
                gpu_types={name: GPU_TYPES[pool.gpu_type] for name, pool in spec.pools.items()},
            )
            offset += seconds
        self._clock[run_id] = start + outcome.seconds

    def save_checkpoint(self, spec: RunSpec, plan: CheckpointPlan) -> float:
        trainer = self._trainer(plan.run_id, plan.attempt)
        if trainer.position != plan.step:
            raise OrchError(f"run {plan.run_id}: trainer is at step {trainer.position}, not {plan.step}")
        seconds = self.physics.checkpoint_seconds(spec)
        self._clock[plan.run_id] = self._clock.get(plan.run_id, 0.0) + seconds
        return seconds

    def evaluate_problems(self, spec: RunSpec, plan: FilterPlan) -> FilterOutcome:
        self._trainer(plan.run_id, plan.attempt)
        outcome = self.physics.evaluate(spec, plan)
        self._clock[plan.run_id] = self._clock.get(plan.run_id, 0.0) + outcome.seconds
        return outcome
