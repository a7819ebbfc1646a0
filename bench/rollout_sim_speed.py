"""How fast the event-granular rollout simulator runs a full rStar2-size step.

The workload is one step of the rStar2-Agent recipe (examples/rstar2-math.yaml): 512 prompts × 32
samples, up to 10 turns and 8,192 response tokens, on 64 single-H100 engines of a 14.8B model. The
baseline is the same engine simulated one decode step at a time (``TokenStepEngine``), measured on a
slice small enough for it (one engine, 256 rollouts); both must generate the same tokens.

    python -m bench.rollout_sim_speed [--quick]     # from the repository root
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence

from orchestrator.hardware import H100_80GB
from orchestrator.rollout.cost import EngineCost
from orchestrator.rollout.engines import Engine, SimEngine, TokenStepEngine
from orchestrator.rollout.shapes import RolloutShape, sample_rollouts
from orchestrator.rollout.simulator import RolloutPhaseResult, simulate_rollout_phase
from orchestrator.spec import ModelSpec

MODEL = ModelSpec(name="Qwen3-14B-Base", params_b=14.8, layers=40, kv_heads=8, head_dim=128)
PROMPTS, SAMPLES, ENGINES = 512, 32, 64
PROMPT_TOKENS, MAX_RESPONSE_TOKENS, MAX_TURNS = 400, 8192, 10
SLICE_ROLLOUTS = 256
SEED = 7


def timed(
    shapes: Sequence[RolloutShape], engines: int, cost: EngineCost, engine: Callable[[EngineCost], Engine]
) -> tuple[RolloutPhaseResult, float]:
    start = time.perf_counter()
    result = simulate_rollout_phase(shapes, engines, cost, engine_factory=engine)
    return result, time.perf_counter() - start


def row(label: str, result: RolloutPhaseResult, engines: int, wall: float) -> str:
    return (
        f"{label:<26} {result.rollouts:>9,} {engines:>7} {result.seconds:>11.1f} {wall:>9.3f} "
        f"{result.events / wall:>11,.0f} {result.preemptions:>11,}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="an eighth of the step (CI-sized)")
    args = parser.parse_args(argv)
    prompts, engines = (PROMPTS // 8, ENGINES // 8) if args.quick else (PROMPTS, ENGINES)

    cost = EngineCost.for_engine(MODEL, H100_80GB, gpus_per_engine=1)
    start = time.perf_counter()
    rng = random.Random(SEED)
    shapes = sample_rollouts(
        rng, range(prompts), SAMPLES, PROMPT_TOKENS, MAX_RESPONSE_TOKENS, MAX_TURNS, lambda _: 0.5
    )
    sampling = time.perf_counter() - start
    step, step_wall = timed(shapes, engines, cost, SimEngine)
    part = shapes[:SLICE_ROLLOUTS]
    fast, fast_wall = timed(part, 1, cost, SimEngine)
    slow, slow_wall = timed(part, 1, cost, TokenStepEngine)

    print(
        f"{MODEL.name} on {H100_80GB.name}: KV cache {cost.kv_capacity_tokens:,} tokens per engine; "
        f"sampling {len(shapes):,} rollouts took {sampling:.3f} s"
    )
    print(
        f"{'':<26} {'rollouts':>9} {'engines':>7} {'simulated s':>11} {'wall s':>9} {'events/s':>11} "
        f"{'preemptions':>11}"
    )
    print(row("step, event-granular", step, engines, step_wall))
    print(row("slice, event-granular", fast, 1, fast_wall))
    print(row("slice, token-by-token", slow, 1, slow_wall))
    same_time = abs(fast.seconds - slow.seconds) <= 1e-6 * slow.seconds
    if fast.generated_tokens != slow.generated_tokens or not same_time:
        print(
            f"MISMATCH: event-granular generated {fast.generated_tokens:,} tokens in {fast.seconds:.6f} s, "
            f"token-by-token {slow.generated_tokens:,} in {slow.seconds:.6f} s",
            file=sys.stderr,
        )
        return 1
    print(f"slice check: both generate {fast.generated_tokens:,} tokens and finish at {fast.seconds:.3f} s")
    print(f"speedup vs token-by-token: {slow_wall / fast_wall:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
