"""What orch adds per rollout turn between the trainer and its engines, against calling the engine directly.

orch's side is the path a trainer's ``orchestrator.worker.rollouts.run_rollouts`` takes, built as it builds
it from ``examples/quickstart.yaml`` (dispatch policy, ``chunk_tokens``, the first stage's
``max_response_tokens`` and ``max_turns``, the tools' limits and concurrency cap): a ``Balancer`` whose
dispatcher places every engine request on an ``HttpEngine`` (aiohttp), every request a flight of the
ledger; tool calls through ``RecordingTools`` → ``SandboxTools`` → a ``CodeExecutor``. Not measured, as
they are not per turn: ``run_rollouts``' per-step set-up (one aiohttp session, one ``/metrics`` scrape per
engine) and the grading of each finished rollout (the trainer's reward, which it computes either way).

The direct side is what a trainer would write without orch: a loop per rollout that POSTs
``/v1/completions`` with aiohttp (its own session, default connector as orch's) and, when a completion ends
in a ```` ```python ```` block, calls the same executor itself and appends its output as orch does.

Both sides: the same engine, one fake engine *process* (``python -m orchestrator.testing.fake_engine
serve``, ``--fake-latency 0 --fake-seconds-per-token 0``: it answers as soon as it has parsed the request
and found the problem among the 300 of ``examples/datasets/arith.jsonl``), so the loopback TCP stack and
the engine's own HTTP handling are real and in both figures; the same rollouts in the same order (dataset
prompts with per-sample seeds; about a third call the tool once, so ~1.35 turns a rollout); the same
interpreter and event loop. The executor is a stub that answers at once (it reads the value the code
assigns; no sandbox, no process), so the figures are orch's plumbing, not the sandbox's (``bench/
tool_burst.py`` measures that). Rollouts run closed-loop at a fixed number in flight: 1 (latency) and
64 (throughput); each of ``--rounds`` rounds times a block of orch and a block of direct, the order
alternating (ABBA...), so drift and a noisy neighbour land on both; one untimed block of each first warms
connections and caches.

A turn's latency: from when the rollout is ready for it (its start, or the end of its previous turn's tool
call) to when its completion has been taken in (the next tool call begins, or the rollout is returned);
timestamps are taken inside the executor, so orch's tool plumbing counts in the turns around the call.
Added per turn = p50 (orch) − p50 (direct) over every turn of every round; p99 likewise; turns/s over the
blocks' wall time. Goal: < 1 ms p50 added per turn at 1 in flight; at 64 in flight the figures are
reported (no goal). Every rollout must end on both sides with the same transcript and turn count (lost:
goal 0). The tool path's own cost is reported apart: ``RecordingTools(SandboxTools(stub)).run`` against
``stub.execute`` called directly, interleaved call by call. On a 2-vCPU machine the engine process and
this one share the cores, so run-to-run spread of the added figure is ±0.1 ms or so; the per-round
spread is printed.

    python bench/worker_overhead.py [--quick] [--rounds N]     # from the repository root
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.core.dispatch import EngineState, make_dispatcher
from orchestrator.rollout.balancer import Balancer, RolloutPrompt, format_tool_output, parse_tool_call
from orchestrator.rollout.engine import COMPLETIONS
from orchestrator.rollout.http_engine import HttpEngine
from orchestrator.rollout.tools import SandboxTools, ToolCall, ToolResult
from orchestrator.spec import RunSpec
from orchestrator.spec.dataset import Problem, read_problems
from orchestrator.spec.files import load_spec
from orchestrator.tools.api import ExecResult, Limits
from orchestrator.tools.executors import limits_of
from orchestrator.worker.rollouts import RecordingTools, sample_seed

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "quickstart.yaml"
DATASET = ROOT / "examples" / "datasets" / "arith.jsonl"
IN_FLIGHT = (1, 64)
ROLLOUTS = {1: 800, 64: 3_000}  # per block
QUICK_ROLLOUTS = {1: 200, 64: 640}
ROUNDS, QUICK_ROUNDS = 6, 4
TOOL_CALLS, QUICK_TOOL_CALLS = 20_000, 4_000
GOAL_ADDED_MS = 1.0  # p50 added per turn at 1 in flight
SEED = 0

# Where the stub executor records (entered, left) of each call of the rollout whose task set it.
TOOL_SPANS: contextvars.ContextVar[list[tuple[float, float]] | None] = contextvars.ContextVar(
    "tool_spans", default=None
)


class InstantExecutor:
    """A ``CodeExecutor`` that answers at once: the value the code assigns to ``answer_value`` (the fake
    model's tool calls print it), or the ``NameError`` the fake's broken code would raise."""

    async def execute(self, code: str, limits: Limits | None = None) -> ExecResult:
        entered = time.perf_counter()
        _, _, value = code.partition("answer_value = ")
        if value:
            result = ExecResult("ok", value.split("\n", 1)[0] + "\n", "", 0, 0.0, 0.0)
        else:
            error = "NameError: name 'answer_value' is not defined\n"
            result = ExecResult("error", "", error, 1, 0.0, 0.0)
        spans = TOOL_SPANS.get()
        if spans is not None:
            spans.append((entered, time.perf_counter()))
        return result


@dataclass(frozen=True)
class Ended:
    """One rollout as a side finished it: its transcript, its turns, and each turn's latency (s)."""

    rollout_id: int
    text: str
    turns: int
    latencies: tuple[float, ...]


@dataclass(frozen=True)
class Block:
    """One closed-loop block of rollouts on one side."""

    seconds: float
    cpu_seconds: float  # of this process (the trainer's side), not the engine's
    ended: list[Ended]

    @property
    def turns(self) -> int:
        return sum(end.turns for end in self.ended)


@dataclass(frozen=True)
class Setup:
    """What both sides share: the engine URL, the stage limits, the tools' limits and the stub."""

    url: str
    spec: RunSpec
    max_response_tokens: int
    max_turns: int
    limits: Limits
    executor: InstantExecutor


def turn_latencies(
    started: float, spans: Sequence[tuple[float, float]], finished: float
) -> tuple[float, ...]:
    """Each turn's latency from the tool calls between them (see the module docstring)."""
    bounds = [started, *(moment for span in spans for moment in span), finished]
    return tuple(bounds[i + 1] - bounds[i] for i in range(0, len(bounds), 2))


def prompts_for(problems: Sequence[Problem], count: int) -> list[RolloutPrompt]:
    """``count`` rollouts over the dataset, sample after sample, each with its own seed (as run_rollouts)."""
    chosen = []
    for index in range(count):
        problem, sample = problems[index % len(problems)], index // len(problems)
        chosen.append(RolloutPrompt(index, problem.prompt, {"seed": sample_seed(SEED, problem.id, sample)}))
    return chosen


async def closed_loop(
    run_one: Callable[[RolloutPrompt], Awaitable[Ended | None]],
    prompts: Sequence[RolloutPrompt],
    in_flight: int,
) -> Block:
    """Run every prompt, ``in_flight`` at a time (a new one starts as one ends); a lost one (None) is left
    out of the block."""
    pending = iter(prompts)
    ended: list[Ended] = []

    async def worker() -> None:
        for prompt in pending:  # one iterator shared by the workers
            end = await run_one(prompt)
            if end is not None:
                ended.append(end)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return Block(time.perf_counter() - started, time.process_time() - cpu, ended)


class OrchSide:
    """Rollouts through orch: a Balancer over an HttpEngine, tools through RecordingTools → SandboxTools."""

    def __init__(self, setup: Setup, session: aiohttp.ClientSession, expected_rollouts: int) -> None:
        self.engine = HttpEngine(setup.url, session)
        self.setup = setup
        self.expected = expected_rollouts
        tools = setup.spec.tools
        self.tools = RecordingTools(
            SandboxTools(setup.executor, setup.limits, max_concurrent_calls=tools.max_concurrent_calls)
        )
        self.balancer: Balancer | None = None

    async def start(self) -> None:
        load = await self.engine.load()
        rollout = self.setup.spec.rollout
        states = [EngineState(engine=0, kv_total_tokens=load.kv_total_tokens)]
        self.balancer = Balancer(
            [self.engine],
            make_dispatcher(rollout.dispatch, states, seed=SEED, expected_rollouts=self.expected),
            self.tools,
            max_response_tokens=self.setup.max_response_tokens,
            max_turns=self.setup.max_turns,
            chunk_tokens=rollout.chunk_tokens,
        )

    async def run_one(self, prompt: RolloutPrompt) -> Ended | None:
        """The rollout, or None when orch lost it (no engine answered, or not in time)."""
        assert self.balancer is not None, "start() first"
        spans: list[tuple[float, float]] = []
        TOOL_SPANS.set(spans)  # this worker's task; the rollout task run_step starts inherits it
        started = time.perf_counter()
        (done,) = await self.balancer.run_step([prompt])
        finished = time.perf_counter()
        self.tools.results.pop(prompt.rollout_id, None)  # keep the recorder bounded
        if done.verdict in ("error", "timeout"):
            return None
        return Ended(prompt.rollout_id, done.text, done.turns, turn_latencies(started, spans, finished))


class DirectSide:
    """Rollouts without orch: POST each turn to the engine, run tool calls on the executor directly."""

    def __init__(self, setup: Setup, session: aiohttp.ClientSession) -> None:
        self.setup = setup
        self.session = session
        self.chunk = setup.spec.rollout.chunk_tokens or setup.max_response_tokens
        self.endpoint = setup.url + COMPLETIONS

    async def run_one(self, prompt: RolloutPrompt) -> Ended | None:
        """The rollout, or None when the engine failed it."""
        try:
            return await self._run_one(prompt)
        except (aiohttp.ClientError, KeyError, IndexError, TypeError):
            return None

    async def _run_one(self, prompt: RolloutPrompt) -> Ended:
        spans: list[tuple[float, float]] = []
        TOOL_SPANS.set(spans)
        started = time.perf_counter()
        context, generated, turns = prompt.prompt, 0, 0
        while turns < self.setup.max_turns and generated < self.setup.max_response_tokens:
            limit = min(self.setup.max_response_tokens - generated, self.chunk)
            payload: dict[str, Any] = {**(prompt.sampling or {}), "prompt": context, "max_tokens": limit}
            async with self.session.post(self.endpoint, json=payload) as response:
                response.raise_for_status()
                body = await response.json()
            text = body["choices"][0]["text"]
            generated += min(body["usage"]["completion_tokens"], limit)
            context += text
            turns += 1
            code = parse_tool_call(text)
            if code is None or turns >= self.setup.max_turns or generated >= self.setup.max_response_tokens:
                break
            result = await self.setup.executor.execute(code, self.setup.limits)
            output = result.stdout if result.verdict == "ok" else result.stdout + result.stderr
            context += format_tool_output(ToolResult(output, tokens=max(1, len(output) // 4)))
        return Ended(prompt.rollout_id, context, turns, turn_latencies(started, spans, time.perf_counter()))


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


@dataclass
class Pooled:
    """One side's blocks at one concurrency, pooled over the rounds."""

    blocks: list[Block]

    @property
    def latencies(self) -> list[float]:
        return [latency for block in self.blocks for end in block.ended for latency in end.latencies]

    @property
    def turns(self) -> int:
        return sum(block.turns for block in self.blocks)

    @property
    def seconds(self) -> float:
        return sum(block.seconds for block in self.blocks)

    @property
    def cpu_seconds(self) -> float:
        return sum(block.cpu_seconds for block in self.blocks)

    @property
    def rollouts(self) -> int:
        return sum(len(block.ended) for block in self.blocks)


def same_rollouts(orch: Block, direct: Block, expected: int) -> tuple[int, int]:
    """(rollouts ended on both sides with the same transcript and turns, rollouts lost on either side)."""
    ours = {end.rollout_id: end for end in orch.ended}
    theirs = {end.rollout_id: end for end in direct.ended}
    lost = (expected - len(ours)) + (expected - len(theirs))
    identical = sum(
        1
        for rid, end in ours.items()
        if rid in theirs and (end.text, end.turns) == (theirs[rid].text, theirs[rid].turns)
    )
    for end in (*orch.ended, *direct.ended):
        if len(end.latencies) != end.turns:  # a turn that ended without a tool call between
            raise SystemExit(
                f"worker_overhead: rollout {end.rollout_id} has {end.turns} turns but "
                f"{len(end.latencies)} timed segments"
            )
    return identical, lost


async def measure(
    setup: Setup, problems: Sequence[Problem], rollouts: dict[int, int], rounds: int
) -> dict[int, tuple[Pooled, Pooled, list[float], int, int]]:
    """Per concurrency: (orch, direct, per-round added p50 in s, identical rollouts, lost rollouts)."""
    results = {}
    async with aiohttp.ClientSession() as orch_session, aiohttp.ClientSession() as direct_session:
        for in_flight, count in rollouts.items():
            prompts = prompts_for(problems, count)
            orch = OrchSide(setup, orch_session, expected_rollouts=count)
            await orch.start()
            direct = DirectSide(setup, direct_session)
            warm = prompts[: max(in_flight, 32)]
            await closed_loop(orch.run_one, warm, in_flight)
            await closed_loop(direct.run_one, warm, in_flight)
            sides: tuple[list[Block], list[Block]] = ([], [])
            per_round, identical, lost = [], 0, 0
            for round_ in range(rounds):
                order = (0, 1) if round_ % 2 == 0 else (1, 0)
                blocks: list[Block | None] = [None, None]
                for side in order:
                    run_one = orch.run_one if side == 0 else direct.run_one
                    blocks[side] = await closed_loop(run_one, prompts, in_flight)
                ours, theirs = blocks
                assert ours is not None and theirs is not None
                sides[0].append(ours)
                sides[1].append(theirs)
                same, gone = same_rollouts(ours, theirs, count)
                identical, lost = identical + same, lost + gone
                per_round.append(
                    percentile(Pooled([ours]).latencies, 0.5) - percentile(Pooled([theirs]).latencies, 0.5)
                )
            results[in_flight] = (Pooled(sides[0]), Pooled(sides[1]), per_round, identical, lost)
    return results


async def tool_path(setup: Setup, calls: int) -> tuple[float, float]:
    """p50 seconds per call: orch's tool path (RecordingTools → SandboxTools → stub) and the stub alone."""
    tools = RecordingTools(SandboxTools(setup.executor, setup.limits))
    code = "answer_value = 42\nprint(answer_value)"
    times: tuple[list[float], list[float]] = ([], [])
    for index in range(calls):
        for side in (0, 1) if index % 2 == 0 else (1, 0):
            started = time.perf_counter()
            if side == 0:
                await tools.run(ToolCall(index % 64, 0, code))
            else:
                await setup.executor.execute(code, setup.limits)
            times[side].append(time.perf_counter() - started)
        tools.results.clear()
    return percentile(times[0], 0.5), percentile(times[1], 0.5)


def start_engine(weights: str) -> tuple[subprocess.Popen[str], str]:
    """The fake engine as a process on an ephemeral port; (process, base URL)."""
    command = [
        sys.executable, "-m", "orchestrator.testing.fake_engine", "serve", weights, "--port", "0",
        "--fake-answers", str(DATASET), "--fake-latency", "0", "--fake-seconds-per-token", "0",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
    }
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # "fake engine ... serving on http://127.0.0.1:PORT"
    if " serving on " not in line:
        process.kill()
        raise SystemExit(f"worker_overhead: the fake engine did not start (exit {process.wait()})")
    return process, line.rsplit(" ", 1)[1].strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI size: fewer rollouts and rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed orch + direct blocks per concurrency")
    args = parser.parse_args(argv)
    rollouts = QUICK_ROLLOUTS if args.quick else ROLLOUTS
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)
    calls = QUICK_TOOL_CALLS if args.quick else TOOL_CALLS
    if rounds < 1:
        parser.error("--rounds must be >= 1")
    spec = load_spec(SPEC)
    stage = spec.curriculum[0]
    problems = read_problems(DATASET)
    with tempfile.TemporaryDirectory(prefix="worker-overhead-weights-") as weights:
        process, url = start_engine(weights)
        try:
            setup = Setup(url, spec, stage.max_response_tokens, stage.max_turns, limits_of(spec.tools),
                          InstantExecutor())  # fmt: skip
            print(
                f"one fake engine process at {url} (0 s latency, 0 s/token, {len(problems)} known problems); "
                f"{rounds} rounds of orch and direct blocks, order alternating; dispatch "
                f"{spec.rollout.dispatch}, chunk {spec.rollout.chunk_tokens}, max_response_tokens "
                f"{stage.max_response_tokens}, max_turns {stage.max_turns}; tools: an executor stub that "
                "answers at once (no sandbox)"
            )
            results = asyncio.run(measure(setup, problems, rollouts, rounds))
            orch_tool, direct_tool = asyncio.run(tool_path(setup, calls))
        finally:
            process.terminate()
            process.wait(timeout=10)
    print(f"{'in flight':>9} {'side':<6} {'rollouts':>8} {'turns':>7} {'seconds':>8} {'turns/s':>9} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'CPU us/turn':>11}")  # fmt: skip
    figures: dict[int, dict[str, tuple[float, float, float, float]]] = {}
    total_lost, total_identical, total_rollouts = 0, 0, 0
    for in_flight, (orch, direct, _, identical, lost) in results.items():
        figures[in_flight] = {}
        for name, pooled in (("orch", orch), ("direct", direct)):
            latencies = pooled.latencies
            p50, p99 = percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3
            rate, cpu = pooled.turns / pooled.seconds, pooled.cpu_seconds / pooled.turns * 1e6
            figures[in_flight][name] = (p50, p99, rate, cpu)
            print(
                f"{in_flight:>9} {name:<6} {pooled.rollouts:>8} {pooled.turns:>7} {pooled.seconds:>8.2f} "
                f"{rate:>9.1f} {p50:>7.3f} {p99:>7.3f} {cpu:>11.1f}"
            )
        total_lost += lost
        total_identical += identical
        total_rollouts += orch.rollouts
    for in_flight, (_, _, per_round, _, _) in results.items():
        spread = ", ".join(f"{value * 1e3:+.3f}" for value in per_round)
        print(f"per-round added p50 at {in_flight} in flight (ms): {spread}")
    print(
        f"tool path: orch (RecordingTools -> SandboxTools -> stub) p50 {orch_tool * 1e6:.1f} us vs the stub "
        f"called directly {direct_tool * 1e6:.1f} us: +{(orch_tool - direct_tool) * 1e6:.1f} us per call "
        f"({calls} calls each, interleaved; no goal)"
    )
    print(
        f"same turns: {total_identical} of {total_rollouts} rollouts ended with the same transcript and "
        "turns on both sides"
    )
    print(f"lost: {total_lost} rollouts (goal 0: {verdict(total_lost == 0)})")
    o50, d50 = figures[1]["orch"][0], figures[1]["direct"][0]
    added = round(o50, 3) - round(d50, 3)
    print(
        f"headline: at 1 in flight orch adds {added:.3f} ms p50 per turn (orch {o50:.3f} ms vs direct "
        f"{d50:.3f} ms, same run) (goal < {GOAL_ADDED_MS:g} ms: {verdict(added < GOAL_ADDED_MS)})"
    )
    for in_flight in figures:
        (o50, o99, orate, ocpu), (d50, d99, drate, dcpu) = (
            figures[in_flight]["orch"],
            figures[in_flight]["direct"],
        )
        print(
            f"at {in_flight} in flight: orch adds {round(o50, 3) - round(d50, 3):.3f} ms p50 and "
            f"{round(o99, 3) - round(d99, 3):.3f} ms p99 per turn, "
            f"{round(ocpu, 1) - round(dcpu, 1):.1f} us of CPU per turn; orch {orate:.1f} turns/s = "
            f"{round(orate, 1) / round(drate, 1):.2f} of direct {drate:.1f} turns/s (reported)"
        )
    print(
        "note: at 64 in flight a turn's latency is mostly its wait for the event loop and the engine "
        "(Little's law: in flight / turns/s), so the added figure there follows the CPU per turn"
    )
    return 1 if total_lost or total_identical != total_rollouts else 0


if __name__ == "__main__":
    raise SystemExit(main())
