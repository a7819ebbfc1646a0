"""CPU cost of the GPU telemetry agent: 8 GPUs sampled at 10 Hz, plus Prometheus scrapes.

CPU time is ``time.process_time()`` (all threads of this process). Per-operation costs come from tight
loops; the headline runs the real ``Agent`` thread at the target rate for a few seconds, scraping its
registry once a second (Prometheus usually scrapes every 15-30 s, so this overstates the exposition
share), and divides CPU seconds by wall seconds: the fraction of one core. Baselines measured in the same
run: the exposition of an empty registry (the floor of any scrape), and the naive sampler that
initialises NVML for every sample (``nvmlInit`` + device handles + ``nvmlShutdown`` each time).

NVML is ``orchestrator.testing.fake_nvml`` by default (no driver needed), charging every call a CPU cost
from ``fake_nvml.PUBLISHED_CALL_COSTS`` (utilization 2.5 us, memory info 11.6 us, process list 4.5 ms; any
other call 2.5 us, an assumption): the driver's share is then an estimate, not a measurement, and every goal
line says "estimated". Only ``--real`` (pynvml on a node with an NVIDIA driver and GPU) measures, and only
then does a goal line say met / NOT met. ``--real`` without a driver or GPU refuses with one line, exit 2.

    python -m bench.telemetry_overhead [--quick] [--real]     # from the repository root
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from orchestrator.telemetry.exporter import Agent
from orchestrator.telemetry.nvml import NvmlSource, NvmlUnavailable
from orchestrator.telemetry.sample import GpuSample
from orchestrator.testing.fake_nvml import PUBLISHED_CALL_COSTS, PUBLISHED_DEFAULT_COST, FakeNvml

GOAL_CORE_FRACTION = 0.01  # of one core, at 10 Hz for 8 GPUs
ESTIMATED = "estimated (fake NVML with published call costs)"
WITHOUT_REAL = "run without --real for the estimate"


def verdict(real: bool, met: bool) -> str:
    """A goal's verdict: only a run on the real driver may say whether it is met."""
    if not real:
        return ESTIMATED
    return "met" if met else "NOT met"


def fake_nvml_costs() -> str:
    named = ", ".join(
        f"{name.removeprefix('nvmlDeviceGet')} {cost * 1e6:g} us"
        for name, cost in PUBLISHED_CALL_COSTS.items()
    )
    return f"{named}; other calls {PUBLISHED_DEFAULT_COST * 1e6:g} us (assumed)"


def open_real_source() -> NvmlSource | str:
    """The real pynvml source, or the one-line reason this node cannot run ``--real``."""
    try:
        source = NvmlSource("bench")
    except NvmlUnavailable as error:
        cause = error.__cause__ or error
        return f"--real needs an NVIDIA driver and GPU on this node (NVML: {cause}); {WITHOUT_REAL}"
    if not source.samples():
        source.close()
        return f"--real needs an NVIDIA GPU on this node (NVML found none); {WITHOUT_REAL}"
    return source


def cpu_per_call(action: Callable[[], Any], seconds: float) -> tuple[float, int]:
    """Mean CPU seconds per call of ``action``, repeating it for about ``seconds`` of CPU time."""
    calls, start = 0, time.process_time()
    while (spent := time.process_time() - start) < seconds:
        for _ in range(10):
            action()
        calls += 10
    return spent / calls, calls


class CountingSource:
    """A ``TelemetrySource`` that counts the samples the agent actually took."""

    def __init__(self, source: NvmlSource) -> None:
        self.source, self.count = source, 0

    def samples(self) -> list[GpuSample]:
        self.count += 1
        return self.source.samples()

    def close(self) -> None:
        self.source.close()


def agent_core_fraction(
    make_nvml: Callable[[], Any], hz: float, seconds: float, scrape_s: float
) -> tuple[float, float]:
    """Run the agent thread at ``hz`` for ``seconds`` of wall time, scraping every ``scrape_s``: the fraction
    of one core it used and the sampling rate it reached (it waits its interval after each sample)."""
    source = CountingSource(NvmlSource("bench", nvml=make_nvml()))
    agent = Agent(source, interval=1.0 / hz).start()
    try:
        wall, cpu, taken = time.perf_counter(), time.process_time(), source.count
        while time.perf_counter() - wall < seconds:
            time.sleep(scrape_s)
            generate_latest(agent.registry)
        elapsed = time.perf_counter() - wall
        return (time.process_time() - cpu) / elapsed, (source.count - taken) / elapsed
    finally:
        agent.stop()


def naive_sample(make_nvml: Callable[[], Any]) -> Callable[[], Any]:
    nvml = make_nvml()

    def sample() -> Any:
        source = NvmlSource("bench", nvml=nvml)  # nvmlInit, count, handles, UUIDs, names, every time
        try:
            return source.samples()
        finally:
            source.close()

    return sample


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized: shorter loops and a 2 s agent run")
    parser.add_argument("--real", action="store_true", help="the real pynvml (needs an NVIDIA driver)")
    parser.add_argument("--gpus", type=int, default=8, help="fake GPUs (ignored with --real)")
    parser.add_argument("--hz", type=float, default=10.0, help="samples per second")
    args = parser.parse_args(argv)
    loop_s, run_s = (0.3, 2.0) if args.quick else (2.0, 10.0)

    def make_nvml() -> Any:
        if args.real:
            return None  # NvmlSource's default: the real pynvml
        return FakeNvml(args.gpus, call_costs=PUBLISHED_CALL_COSTS, default_cost=PUBLISHED_DEFAULT_COST)

    if args.real:
        opened = open_real_source()
        if isinstance(opened, str):
            print(f"telemetry_overhead: {opened}", file=sys.stderr)
            return 2
        source = opened
    else:
        source = NvmlSource("bench", nvml=make_nvml())
    gpus = len(source.samples())
    scraped = Agent(source, interval=1.0)
    scraped.sample_once()
    empty = CollectorRegistry()
    scrape_hz = 1.0
    rows = [  # label, rate it runs at in the agent (per second), (CPU per call, calls)
        (
            "empty registry exposition (floor)",
            scrape_hz,
            cpu_per_call(lambda: generate_latest(empty), loop_s),
        ),
        (f"sample {gpus} GPUs, NVML init once (orch)", args.hz, cpu_per_call(source.samples, loop_s)),
        (f"sample {gpus} GPUs, NVML init per sample", args.hz, cpu_per_call(naive_sample(make_nvml), loop_s)),
        (
            f"scrape: collect + exposition, {gpus} GPUs",
            scrape_hz,
            cpu_per_call(lambda: generate_latest(scraped.registry), loop_s),
        ),
    ]
    scraped.stop()
    fraction, reached_hz = agent_core_fraction(make_nvml, args.hz, run_s, scrape_s=1.0 / scrape_hz)

    nvml = "pynvml (real driver): measured" if args.real else f"fake_nvml charging {fake_nvml_costs()}"
    print(f"NVML: {nvml}; {gpus} GPUs")
    print(f"{'operation':<44} {'CPU us/call':>12} {'calls':>8} {'per s':>6} {'% of a core':>12}")
    for label, rate, (per_call, calls) in rows:
        print(f"{label:<44} {per_call * 1e6:>12.1f} {calls:>8,} {rate:>6g} {per_call * rate:>12.3%}")
    run = f"agent run: {reached_hz:.1f} Hz reached + {scrape_hz:g} scrape/s, {run_s:g} s"
    print(f"{run:<44} {'':>12} {'':>8} {'':>6} {fraction:>12.3%}")
    floor, orch, naive = rows[0][2][0], rows[1][2][0], rows[2][2][0]
    print(f"one sample of {gpus} GPUs costs {orch / floor:.0f}x an empty-registry exposition")
    print(
        f"headline: the agent uses {fraction:.2%} of one core sampling {gpus} GPUs at {reached_hz:.1f} Hz "
        f"({args.hz:g} Hz asked), against the goal < {GOAL_CORE_FRACTION:.0%} of one core: "
        f"{verdict(args.real, fraction < GOAL_CORE_FRACTION)}"
    )
    print(
        f"baseline: NVML initialised per sample costs {naive / orch:.2f}x orch's sample (init once), "
        + ("measured" if args.real else f"{ESTIMATED}; nvmlInit and handle lookups have no published cost")
    )
    return 0  # a missed goal is a printed verdict, not a failure: this 2-core machine is noisy


if __name__ == "__main__":
    sys.exit(main())
