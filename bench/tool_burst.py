"""A burst of concurrent tool calls through orch's tool service, against one `python -c` per call.

45,000 snippets (``--quick``: 1,000) are submitted at once to a ``ToolService`` over a warm
``SandboxPool`` (``--workers``, default: the CPU count): short arithmetic, loops and prints, plus in every
1,000 one slow snippet (~0.25 s of CPU) and one failing one (in turn: an exception, an exit status, a
syntax error, an infinite loop that runs into the limits). Reported: throughput, p50/p99 latency from
acceptance to answer, answers by verdict, lost (accepted and never answered: must be 0), and the peak RSS
of the service process and of its largest sandbox process. The baseline, in the same run, runs the first
``--baseline`` snippets of the same sequence (default: 4,000, i.e. every kind of failure; ``--quick``: the
same 1,000 as orch) as ``subprocess.run([python, "-c", code])`` behind the same concurrency cap, so both
sides run the same mix; the headline is the ratio of the two throughputs (goal: >= 10x on this 2-core
machine).

    python bench/tool_burst.py [--quick] [--workers N] [--baseline N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence

from orchestrator.tools.api import ExecResult, Limits
from orchestrator.tools.sandbox import SandboxPool
from orchestrator.tools.service import ToolService

CALLS, QUICK_CALLS = 45_000, 1_000
BASELINE, QUICK_BASELINE = 4_000, 1_000
PERIOD = 1_000  # one slow and one failing snippet in every PERIOD
LIMITS = Limits(wall_seconds=5.0, cpu_seconds=3.0)
FAILING = (  # in turn, one per PERIOD: --quick (one PERIOD) has no 3-second loop to set its makespan
    "raise ValueError('bad input')",
    "import sys; sys.exit(3)",
    "def f(:\n  pass",
    "while True: pass",  # runs into the limits: a timeout
)


SLOW = "total = 0\nfor i in range(3_000_000):\n    total += i % 7\nprint(total)"  # ~0.25 s of CPU
SPECIAL = frozenset({SLOW, *FAILING})


def snippet(index: int) -> str:
    """The index-th snippet of the mix (deterministic)."""
    if index % PERIOD == 3 * PERIOD // 4:
        return SLOW
    if index % PERIOD == PERIOD // 4:
        return FAILING[(index // PERIOD) % len(FAILING)]
    kind = index % 4
    if kind == 0:
        return f"print({index} * {index} + 17)"
    if kind == 1:
        return f"print(sum(i * i for i in range({index % 1000})))"
    if kind == 2:
        return f"x = [{index}, 3, 5]\nfor v in x:\n    print(v ** 2)"
    return f"from fractions import Fraction\nprint(Fraction({index}, 7) + Fraction(1, 3))"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def burst(
    codes: Sequence[str], workers: int, snippet_cpu: Counter[str] | None = None
) -> tuple[float, list[float], Counter[str], int]:
    """Submit every snippet at once; (seconds, latencies, verdicts, lost). ``snippet_cpu`` gets the CPU
    seconds the snippets themselves used, short ones and slow or failing ones apart."""
    pool = SandboxPool(workers, default_limits=LIMITS)
    service = ToolService(pool, concurrency=workers, max_pending=len(codes) + 1)
    async with pool, service:
        started = time.monotonic()
        latencies: list[float] = []
        verdicts: Counter[str] = Counter()

        async def one(code: str) -> ExecResult:
            accepted = time.monotonic()
            result = await service.execute(code)
            latencies.append(time.monotonic() - accepted)
            verdicts[result.verdict] += 1
            if snippet_cpu is not None:
                snippet_cpu["slow or failing" if code in SPECIAL else "short"] += result.cpu_seconds
            return result

        results = await asyncio.gather(*(one(code) for code in codes), return_exceptions=True)
        seconds = time.monotonic() - started
        lost = sum(1 for result in results if not isinstance(result, ExecResult))
        lost += len(codes) - service.stats().answered
    return seconds, latencies, verdicts, lost


async def baseline(codes: Sequence[str], cap: int) -> tuple[float, Counter[str]]:
    """One ``python -c`` per snippet, at most ``cap`` at once; (seconds, outcomes)."""
    gate = asyncio.Semaphore(cap)
    outcomes: Counter[str] = Counter()

    def run_one(code: str) -> str:
        try:
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, timeout=LIMITS.wall_seconds, check=False
            )
        except subprocess.TimeoutExpired:
            return "timeout"
        return "ok" if done.returncode == 0 else "error"

    async def one(code: str) -> None:
        async with gate:
            outcomes[await asyncio.to_thread(run_one, code)] += 1

    started = time.monotonic()
    await asyncio.gather(*(one(code) for code in codes))
    return time.monotonic() - started, outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"CI size: {QUICK_CALLS} calls")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--baseline", type=int, default=None, help="snippets the baseline runs")
    args = parser.parse_args()
    calls = QUICK_CALLS if args.quick else CALLS
    baseline_calls = args.baseline or (QUICK_BASELINE if args.quick else BASELINE)
    codes = [snippet(i) for i in range(calls)]
    print(
        f"{calls} concurrent snippets (1 slow and 1 failing in every {PERIOD}) on {args.workers} sandbox "
        f"workers, limits wall {LIMITS.wall_seconds:g}s cpu {LIMITS.cpu_seconds:g}s; baseline: the first "
        f"{baseline_calls} as `python -c`, {args.workers} at once"
    )
    snippet_cpu: Counter[str] = Counter()
    before = os.times()
    seconds, latencies, verdicts, lost = asyncio.run(burst(codes, args.workers, snippet_cpu))
    after = os.times()
    used = sum(after[:4]) - sum(before[:4])  # the service and its (reaped) sandbox processes
    service_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sandbox_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rate = calls / seconds
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    print(
        f"orch      {calls:>6} calls in {seconds:7.1f}s = {rate:8.1f}/s  p50 {p50:.3f}s p99 {p99:.3f}s  "
        f"verdicts {dict(sorted(verdicts.items()))}  lost {lost}"
    )
    print(f"peak RSS: service process {service_rss:.0f} MiB, largest sandbox process {sandbox_rss:.0f} MiB")
    special = sum(1 for code in codes if code in SPECIAL)
    print(
        f"CPU: {used:.1f} core-s in all; the snippets' own: {snippet_cpu['short']:.1f} s for "
        f"{calls - special} short ones, {snippet_cpu['slow or failing']:.1f} s for {special} slow or failing"
    )
    base_seconds, outcomes = asyncio.run(baseline(codes[:baseline_calls], args.workers))
    base_rate = baseline_calls / base_seconds
    print(
        f"baseline  {baseline_calls:>6} calls in {base_seconds:7.1f}s = {base_rate:8.1f}/s  "
        f"outcomes {dict(sorted(outcomes.items()))}"
    )
    print(
        f"headline: {rate / base_rate:.1f}x the throughput of one `python -c` per call, lost {lost} "
        "(goals: >= 10x, 0 lost)"
    )
    if lost:
        sys.exit(1)


if __name__ == "__main__":
    main()
