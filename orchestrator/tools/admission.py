"""The tool-execution service: bounded admission in front of a ``CodeExecutor``, one answer per request.

``accept`` checks a request (code size, limits no higher than the service's ``max_limits``) and admits
it only while fewer than ``max_pending`` requests are accepted and unanswered or answered and not yet
fetched (and ``max_pending_bytes`` of their code and kept output); otherwise it raises ``Busy`` with a
retry-after estimate, so a burst costs bounded memory instead of an unbounded queue. Accepted requests
wait in one FIFO queue; ``concurrency`` runner tasks feed them to the executor. Every accepted request
is answered exactly once: with the executor's result, or, if the executor raises (its worker or Ray
actor died under it, a bug), with a ``killed`` result that says why. Answers of requests submitted
without waiting are kept for ``result(id)`` until fetched once or ``keep_results_s`` seconds passed;
their ids are random (128 bits), so one client cannot read another's answer by guessing.

Reward checks (``verify``) are pure and fast (``orchestrator.tools.grading``): they run inline, batched,
and are counted in the same metrics.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from orchestrator.telemetry.names import TOOL_METRICS
from orchestrator.tools.api import (
    MAX_CODE_BYTES,
    MAX_LIMITS,
    SERVICE_MAX_LIMITS,
    CodeExecutor,
    ExecResult,
    Limits,
)

__all__ = ["Busy", "ServiceStats", "ToolService"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Busy(Exception):
    """Admission is full: retry after ``retry_after_s`` seconds."""

    def __init__(self, pending: int, retry_after_s: float, message: str | None = None) -> None:
        super().__init__(message or f"busy: {pending} requests pending; retry after {retry_after_s:.2f}s")
        self.pending = pending
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class ServiceStats:
    pending: int  # accepted, not answered
    queued: int  # accepted, waiting for a runner
    running: int
    answered: int
    rejected: int
    unfetched: int  # answered without a waiting caller, kept until fetched or expired


@dataclass
class _Call:
    id: str
    code: str
    limits: Limits
    accepted_at: float
    keep: bool  # keep the answer for result(id)
    charge: int  # bytes counted against max_pending_bytes: the code, plus output_bytes when kept
    answer: asyncio.Future[ExecResult] = field(repr=False)


class ToolService:
    """Runs code for many clients at once; see the module docstring."""

    def __init__(
        self,
        executor: CodeExecutor,
        *,
        concurrency: int,
        max_pending: int = 65_536,
        max_pending_bytes: int = 256 * 2**20,
        default_limits: Limits | None = None,
        max_limits: Limits = SERVICE_MAX_LIMITS,
        keep_results_s: float = 300.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if concurrency < 1 or max_pending < 1 or max_pending_bytes < MAX_CODE_BYTES:
            raise ValueError(
                "concurrency and max_pending must be >= 1 and max_pending_bytes >= one maximal snippet "
                f"({MAX_CODE_BYTES} bytes); got {concurrency}, {max_pending}, {max_pending_bytes}"
            )
        self.executor = executor
        self.concurrency = concurrency
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        # Without limits of its own, the service applies the executor's (a SandboxPool's default_limits),
        # else the library defaults: a request without limits never runs under looser ones by surprise.
        inherited = getattr(executor, "default_limits", None)
        self.default_limits = default_limits or (inherited if isinstance(inherited, Limits) else Limits())
        max_limits.check_within(MAX_LIMITS)
        self.default_limits.check_within(max_limits)
        self.max_limits = max_limits
        if not keep_results_s > 0:
            raise ValueError(f"keep_results_s: must be > 0 seconds, got {keep_results_s!r}")
        self.keep_results_s = keep_results_s
        self._calls: dict[str, _Call] = {}  # accepted and unanswered
        # id -> (answered at, result, bytes charged), oldest first; counted in max_pending until taken
        self._kept: OrderedDict[str, tuple[float, ExecResult, int]] = OrderedDict()
        self._queue: deque[_Call] = deque()
        self._wakeup: asyncio.Event | None = None
        self._runners: list[asyncio.Task[None]] = []
        self._pending_bytes = 0
        self._running = 0
        self._answered = 0
        self._rejected = 0
        self._recent: deque[float] = deque(maxlen=512)  # answer times, for the retry-after estimate
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics = _Metrics(self.registry, self)

    # ---- life -------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runners:
            return
        self._wakeup = asyncio.Event()
        self._runners = [asyncio.ensure_future(self._runner()) for _ in range(self.concurrency)]

    async def close(self) -> None:
        """Stop the runners; requests still pending are answered ``killed`` (nothing is left hanging)."""
        for task in self._runners:
            task.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        self._runners = []
        for call in list(self._calls.values()):
            self._answer(call, ExecResult.abandoned("the tool service shut down before running it"))
        self._queue.clear()

    async def __aenter__(self) -> ToolService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- admission --------------------------------------------------------------------------------

    def check(self, code: Any, limits: Any = None) -> tuple[str, Limits]:
        """A request's code and limits, or ValueError naming the field and the fix."""
        if not isinstance(code, str):
            raise ValueError(f"code: must be a string of Python source, got {type(code).__name__}")
        size = len(code.encode("utf-8", "surrogatepass"))
        if size > MAX_CODE_BYTES:
            raise ValueError(f"code: {size} bytes is above the maximum of {MAX_CODE_BYTES}; send less code")
        if limits is None:
            return code, self.default_limits
        if isinstance(limits, Limits):
            chosen = limits
        elif isinstance(limits, dict):
            chosen = self.default_limits.merged(limits)
        else:
            kind = type(limits).__name__
            raise ValueError(f"limits: must be an object of limit names to numbers, got {kind}")
        try:
            chosen.check_within(self.max_limits)
        except ValueError as error:
            raise ValueError(f"{error}; ask for less (the operator sets it with --max-limit)") from None
        return code, chosen

    def accept(self, code: Any, limits: Any = None) -> str:
        """Admit one request whose answer is kept for ``result``/``wait``; its id. ValueError for a bad
        request, ``Busy`` when admission is full."""
        return self.accept_batch([(code, limits)])[0]

    def accept_batch(self, requests: Sequence[tuple[Any, Any]]) -> list[str]:
        """``accept`` for every request or none (ValueError names the index and field)."""
        return [call_id for call_id, _ in self.submit_batch(requests, keep=True)]

    def submit_batch(
        self, requests: Sequence[tuple[Any, Any]], *, keep: bool = False
    ) -> list[tuple[str, asyncio.Future[ExecResult]]]:
        """Admit every request or none; each one's id and the future of its answer (for callers that
        wait: unless ``keep``, the answer is not kept once given)."""
        if self._wakeup is None:
            raise RuntimeError("start() the service first")
        checked: list[tuple[str, Limits]] = []
        for index, (code, limits) in enumerate(requests):
            try:
                checked.append(self.check(code, limits))
            except ValueError as error:
                raise ValueError(f"requests[{index}].{error}" if len(requests) > 1 else str(error)) from None
        charges = [len(code) + (limits.output_bytes if keep else 0) for code, limits in checked]
        size = sum(charges)
        if size > self.max_pending_bytes:  # could never be admitted: a bad request, not a busy service
            raise ValueError(
                f"requests: {size} bytes of code and kept output (output_bytes each when not waiting) is "
                f"above the service's maximum of {self.max_pending_bytes} pending bytes; send a smaller batch"
            )
        self._expire()
        if (
            len(self._calls) + len(self._kept) + len(checked) > self.max_pending
            or self._pending_bytes + size > self.max_pending_bytes
        ):
            self._rejected += len(checked)
            self._metrics.rejected.inc(len(checked))
            raise Busy(len(self._calls) + len(self._kept), self._retry_after())
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        admitted: list[tuple[str, asyncio.Future[ExecResult]]] = []
        for (code, limits), charge in zip(checked, charges, strict=True):
            call_id = secrets.token_urlsafe(16)  # 128 random bits: not guessable from another call's id
            call = _Call(call_id, code, limits, now, keep, charge, loop.create_future())
            self._calls[call.id] = call
            self._queue.append(call)
            admitted.append((call.id, call.answer))
        self._pending_bytes += size
        self._wakeup.set()
        return admitted

    # ---- answers ----------------------------------------------------------------------------------

    async def wait(self, call_id: str) -> ExecResult:
        """The answer of an ``accept``ed request (waits for it, and takes it: it is given once).
        KeyError for an unknown, expired or already taken id."""
        call = self._calls.get(call_id)
        if call is not None:
            await asyncio.shield(call.answer)
        result = self.result(call_id)
        assert result is not None
        return result

    def result(self, call_id: str) -> ExecResult | None:
        """The kept answer, taken (a second call raises KeyError), or None while it runs; KeyError for an
        id never accepted, already taken or expired."""
        self._expire()
        if call_id in self._calls:
            return None
        kept = self._kept.pop(call_id, None)
        if kept is None:
            raise KeyError(call_id)
        self._pending_bytes -= kept[2]
        return kept[1]

    async def execute(self, code: str, limits: Limits | None = None) -> ExecResult:
        """``CodeExecutor``: admit and wait (``Busy`` when admission is full)."""
        return (await self.execute_batch([(code, limits)]))[0]

    async def execute_batch(self, requests: Sequence[tuple[Any, Any]]) -> list[ExecResult]:
        """Admit every request or none, and wait for all their answers (in request order)."""
        answers = [answer for _, answer in self.submit_batch(requests)]
        return list(await asyncio.gather(*(asyncio.shield(answer) for answer in answers)))

    def stats(self) -> ServiceStats:
        return ServiceStats(
            len(self._calls), len(self._queue), self._running, self._answered, self._rejected, len(self._kept)
        )

    # ---- running ----------------------------------------------------------------------------------

    async def _runner(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            call = self._queue.popleft()
            self._running += 1
            try:
                result = await self.executor.execute(call.code, call.limits)
            except asyncio.CancelledError:
                lost = ExecResult.abandoned("the tool service shut down while it ran", call.accepted_at)
                self._answer(call, lost)
                raise
            except Exception as error:  # the executor failed, not the snippet: still one answer
                failure = f"executor failed: {type(error).__name__}: {error}"
                result = ExecResult.abandoned(failure, call.accepted_at)
            finally:
                self._running -= 1
            self._answer(call, result)

    def _answer(self, call: _Call, result: ExecResult) -> None:
        if self._calls.pop(call.id, None) is None:
            return  # already answered
        now = time.monotonic()
        self._answered += 1
        self._recent.append(now)
        self._metrics.completed.labels("exec", result.verdict).inc()
        self._metrics.latency.labels("exec").observe(now - call.accepted_at)
        if call.keep:  # its bytes stay charged until the answer is taken or expires
            self._kept[call.id] = (now, result, call.charge)
        else:
            self._pending_bytes -= call.charge
        if not call.answer.done():
            call.answer.set_result(result)

    def _expire(self) -> None:
        horizon = time.monotonic() - self.keep_results_s
        while self._kept and next(iter(self._kept.values()))[0] < horizon:
            _, (_, _, charge) = self._kept.popitem(last=False)
            self._pending_bytes -= charge

    def _retry_after(self) -> float:
        """Seconds until about a tenth of the pending requests are answered, at the recent answer rate."""
        recent = self._recent
        estimate = 1.0
        if len(recent) >= 2 and recent[-1] > recent[0]:
            rate = (len(recent) - 1) / (recent[-1] - recent[0])
            estimate = min(30.0, max(0.05, 0.1 * len(self._calls) / rate))
        if self._kept and not self._calls:  # full of unfetched answers: room when the oldest expires
            oldest = next(iter(self._kept.values()))[0]
            estimate = max(0.05, min(30.0, oldest + self.keep_results_s - time.monotonic()))
        return estimate

    def count_verified(self, verdicts: Sequence[bool], started: float) -> None:
        """Metrics for a batch of reward checks answered inline."""
        elapsed = time.monotonic() - started
        for correct in verdicts:
            self._metrics.completed.labels("verify", "correct" if correct else "incorrect").inc()
            self._metrics.latency.labels("verify").observe(elapsed)


class _Metrics:
    def __init__(self, registry: CollectorRegistry, service: ToolService) -> None:
        def text(name: str) -> str:
            return TOOL_METRICS[name][1]

        in_flight = Gauge("orch_tools_in_flight", text("orch_tools_in_flight"), registry=registry)
        in_flight.set_function(lambda: len(service._calls))
        queued = Gauge("orch_tools_queued", text("orch_tools_queued"), registry=registry)
        queued.set_function(lambda: len(service._queue))
        self.completed = Counter(
            "orch_tools_completed", text("orch_tools_completed_total"), ["kind", "verdict"], registry=registry
        )
        self.rejected = Counter("orch_tools_rejected", text("orch_tools_rejected_total"), registry=registry)
        self.latency = Histogram(
            "orch_tools_latency_seconds",
            text("orch_tools_latency_seconds"),
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
