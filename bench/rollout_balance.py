"""Rollout balance: every dispatch policy on the same rStar2-like step, against a lower bound.

64 simulated H100-80GB engines serve a 14.8B bf16 model (Qwen3-14B shape). The step is 512 prompts ×
16 samples (quick: 64 × 16 on 8 engines), long-tailed lognormal response lengths capped at the stage
limit, 1–10 turns with lognormal tool calls (orchestrator/rollout/shapes.py states the distributions).
For each policy: makespan, a lower bound, makespan ÷ bound, GPU busy fraction, preemptions and
rollout latency percentiles; the headline compares KV-aware dispatch with the static even split. KV-bounded
policies reserve context + ``--chunk-tokens`` per engine request (continuing longer answers in the next
request); ``kv_aware/whole`` reserves context + the whole remaining budget, as rStar2-Agent does;
``kv_aware/oracle`` is a reference no dispatcher can run: kv_aware whose queues know every rollout's
length in advance and place the longest first. The other
policies send the whole budget as ``max_tokens``, as RL frameworks do. A turn placed on the engine of the
rollout's previous request finds its prefix cached (orchestrator/rollout/balanced.py).

Lower bound = max(the longest single rollout run alone on an idle engine, total work ÷ aggregate
capacity), where an engine's best decode throughput is a full KV cache of sequences of the step's mean
context, and prefill is each prompt and tool output once at the engine's prefill rate (everything else is
in a prefix cache at best). It is a true lower bound (every decode step reads the weights once and holds
at most a full KV cache, so steps ≥ Σ token contexts ÷ capacity), but the two terms cannot both be met: the
``tail:`` line shows how empty the engines of the rollouts that run to the stage limit would have to be.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from orchestrator.core.dispatch import KV_BOUNDED, POLICIES, make_dispatcher
from orchestrator.hardware import H100_80GB
from orchestrator.rollout.balanced import simulate_balanced_phase
from orchestrator.rollout.cost import EngineCost
from orchestrator.rollout.shapes import (
    PROBLEM_SIGMA,
    RESPONSE_MEDIAN_FRACTION,
    SAMPLE_SIGMA,
    TOOL_SECONDS_MEDIAN,
    TOOL_SECONDS_SIGMA,
    RolloutShape,
    sample_rollouts,
)
from orchestrator.spec import ModelSpec

MODEL = ModelSpec(name="Qwen3-14B-Base", params_b=14.8, layers=40, kv_heads=8, head_dim=128, dtype="bf16")


def lower_bound(shapes: list[RolloutShape], engines: int, cost: EngineCost) -> float:
    chain, decode_tokens, prefill_tokens, context_weight = 0.0, 0, 0, 0
    for shape in shapes:
        context = shape.prompt_tokens
        alone = cost.prefill_seconds(context)
        prefill_tokens += context
        for turn in shape.turns:
            alone += cost.decode_seconds(1, context, turn.response_tokens) + turn.tool_seconds
            alone += cost.prefill_seconds(turn.tool_output_tokens)
            decode_tokens += turn.response_tokens
            prefill_tokens += turn.tool_output_tokens
            context_weight += turn.response_tokens * (context + turn.response_tokens // 2)
            context += turn.response_tokens + turn.tool_output_tokens
        chain = max(chain, alone)
    mean_context = context_weight / max(1, decode_tokens)
    batch = max(1.0, cost.kv_capacity_tokens / mean_context)
    throughput = batch / cost.decode_step_seconds(int(batch), cost.kv_capacity_tokens)
    work = (decode_tokens / throughput + cost.prefill_seconds(prefill_tokens)) / engines
    return max(chain, work)


def tail_note(shapes: list[RolloutShape], cost: EngineCost, limit: int, bound: float) -> str:
    """Why the bound is hard to reach: what the rollouts that run to the stage limit need of their engines."""
    capped = [shape for shape in shapes if shape.response_tokens >= limit]
    if not capped:
        return "no rollout runs to the stage limit"
    full = cost.kv_capacity_tokens
    alone = cost.decode_step_seconds(1, 0)
    per_token = (cost.decode_step_seconds(1, full) - alone) / full  # decode step time per KV token held
    tools = sorted(sum(turn.tool_seconds for turn in shape.turns) for shape in capped)
    allowed_step = (1.05 * bound - tools[len(tools) // 2]) / limit
    fill = max(0.0, (allowed_step - alone) / per_token / full)
    return (
        f"{len(capped)} rollouts ({len(capped) / len(shapes):.1%}) run to the {limit}-token limit: {limit} "
        f"sequential decode steps each, {limit * alone:.0f}s on an idle engine, "
        f"{limit * cost.decode_step_seconds(1, full):.0f}s on a full one; to end within 1.05x the bound "
        f"(median tool time {tools[len(tools) // 2]:.1f}s) their engines could be at most {fill:.0%} full on "
        "average, while the bound's work term has every engine 100% full throughout"
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_table(args: argparse.Namespace, max_response_tokens: int) -> None:
    prompts, samples, engines = (64, 16, 8) if args.quick else (512, 16, 64)
    cost = EngineCost.for_engine(MODEL, H100_80GB, 1)
    rng = random.Random(args.seed)
    shapes = sample_rollouts(rng, list(range(prompts)), samples, 400, max_response_tokens, 10, lambda p: 0.5)
    bound = lower_bound(shapes, engines, cost)
    print(
        f"\n{prompts} prompts x {samples} samples = {len(shapes)} rollouts on {engines} x {H100_80GB.name}, "
        f"{MODEL.name}, max {max_response_tokens} response tokens, seed {args.seed}; response length "
        f"lognormal, median {RESPONSE_MEDIAN_FRACTION:.0%} of the budget, sigma {PROBLEM_SIGMA} per problem "
        f"+ {SAMPLE_SIGMA} per sample; 1-10 turns, tool calls lognormal median {TOOL_SECONDS_MEDIAN}s "
        f"sigma {TOOL_SECONDS_SIGMA}; lower bound {bound:.1f}s"
    )
    print(
        f"{'policy':<18} {'chunk':>6} {'makespan s':>10} {'÷ bound':>8} {'busy':>6} {'preempt':>8} "
        f"{'p50 s':>8} {'p99 s':>8} {'wall s':>7}"
    )
    rows = [(policy, args.chunk_tokens if policy in KV_BOUNDED else None) for policy in POLICIES]
    rows.insert(POLICIES.index("kv_aware") + 1, ("kv_aware/whole", None))
    rows.insert(POLICIES.index("kv_aware") + 2, ("kv_aware/oracle", args.chunk_tokens))
    makespans: dict[str, float] = {}
    busy_of: dict[str, float] = {}
    preemptions: dict[str, int] = {}
    for name, chunk in rows:
        policy = name.split("/")[0]
        started = time.perf_counter()
        phase = simulate_balanced_phase(
            shapes,
            engines,
            cost,
            lambda states, policy=policy: make_dispatcher(
                policy, states, seed=args.seed, expected_rollouts=len(shapes)
            ),
            max_response_tokens,
            chunk_tokens=chunk,
            # A reference, not a policy: queues ordered longest rollout first, lengths known in advance.
            priority=(lambda key, _: shapes[key].response_tokens) if name.endswith("/oracle") else None,
        )
        wall = time.perf_counter() - started
        result = phase.result
        busy = sum(result.engine_busy_seconds) / (engines * result.seconds)
        latencies = list(phase.rollout_seconds)
        makespans[name], busy_of[name], preemptions[name] = result.seconds, busy, result.preemptions
        print(
            f"{name:<18} {chunk or 'whole':>6} {result.seconds:>10.1f} {result.seconds / bound:>8.2f} "
            f"{busy:>6.2f} {result.preemptions:>8} {statistics.median(latencies):>8.1f} "
            f"{percentile(latencies, 0.99):>8.1f} {wall:>7.2f}"
        )
    print(f"tail: {tail_note(shapes, cost, max_response_tokens, bound)}")
    kv = makespans["kv_aware"]
    speedup = makespans["static"] / kv

    def goal(met: bool) -> str:
        return "met" if met else "NOT met"

    busy, preempted, oracle = busy_of["kv_aware"], preemptions["kv_aware"], makespans["kv_aware/oracle"]
    print(
        f"headline: at {max_response_tokens} tokens kv_aware makespan {kv:.1f}s = {kv / bound:.2f}x the "
        f"lower bound (goal <= 1.05x: {goal(kv <= 1.05 * bound)}); {speedup:.2f}x faster than the static "
        f"even split (goal >= 1.5x: {goal(speedup >= 1.5)}); busy {busy:.2f} (goal >= 0.95: "
        f"{goal(busy >= 0.95)}); {preempted} preemptions (goal 0: {goal(preempted == 0)}); the oracle "
        f"reference: {oracle / bound:.2f}x the bound"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI size: 64 prompts x 16 samples on 8 engines")
    parser.add_argument("--seed", type=int, default=20250828)
    parser.add_argument(
        "--max-response-tokens", type=int, nargs="+", default=None, help="stage limits (default 8192 12288)"
    )
    parser.add_argument("--chunk-tokens", type=int, default=512, help="KV-bounded policies' request chunk")
    args = parser.parse_args()
    limits = args.max_response_tokens or ([8192] if args.quick else [8192, 12288])
    for limit in limits:
        run_table(args, limit)


if __name__ == "__main__":
    main()
