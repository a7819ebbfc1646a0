"""Sandbox pools on a Ray cluster; ``RayPool`` implements ``CodeExecutor``.

``start`` connects to Ray (or reuses the connection this process already has), lists the alive nodes and
pins one async actor to each node that advertises CPUs (``NodeAffinitySchedulingStrategy``, not soft). Each
actor hosts a ``SandboxPool`` with one worker per CPU of its node (or ``workers_per_node``), so every
guarantee of the sandbox holds unchanged on every node. Actors reserve no Ray CPU (``num_cpus=0``): the
actor itself only waits on pipes, and its zygotes are outside Ray's accounting anyway; reserving the
node's CPUs would not stop them competing with other Ray work, and would make the actor unschedulable
while anything else holds a CPU there. A node that runs other Ray work is therefore oversubscribed; give
the tool pools nodes of their own, or lower ``workers_per_node``.

Each call goes to the actor with the least load (calls in flight per sandbox worker; ties go to the lowest
index), and each call is answered exactly once. If an actor dies (it was killed, its process crashed, its
node went away) the calls it held are answered ``killed`` and not re-run, since code can have side
effects. The actor is replaced on the same node if that node is still alive, and takes calls again once its
sandbox workers are up; meanwhile calls go to the other nodes (or wait, if there are none). A node that is
gone, or whose replacement fails to start ``REPLACE_ATTEMPTS`` times, leaves the pool, which runs on the
others (and answers ``killed`` once none is left).

Every node must be able to import ``orchestrator`` (same install as the driver).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import ray
import ray.exceptions
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.errors import OrchError
from orchestrator.tools.api import MAX_CODE_BYTES, MAX_LIMITS, ExecResult, Limits
from orchestrator.tools.sandbox import NETWORK_MODES, NetworkMode, SandboxError, SandboxPool, SandboxStats

__all__ = ["RayPool", "RayPoolError"]

log = logging.getLogger(__name__)

DEFAULT_LIMITS = Limits()
ACTOR_CPUS = 0  # see the module docstring
MAX_CONCURRENCY = 10_000  # calls one actor takes at once; its sandbox pool queues what its workers cannot run
CONNECT_SECONDS = 10.0  # for the Ray address to accept a TCP connection
START_SECONDS = 120.0  # for an actor to be scheduled, import orch and start its sandbox workers
REPLACE_ATTEMPTS = 3  # starts of a replacement actor before its node leaves the pool
REPLACE_BACKOFF_S = 1.0  # times the attempt number, between them
CLOSE_SECONDS = 10.0  # for the actors' pools to stop their workers before the actors are killed
REASON_CHARS = 400  # of a Ray error's message kept in a "killed" answer


class RayPoolError(OrchError):
    """The pool cannot run calls: it is not started, it is closed, or Ray or its actors do not start."""


class _SandboxActor:
    """One node's ``SandboxPool``, run as an async Ray actor on that node."""

    def __init__(
        self, workers: int, default_limits: Limits, network: NetworkMode, allow_weak_isolation: bool = False
    ) -> None:
        self._settings = (workers, default_limits, network, allow_weak_isolation)
        self._pool: SandboxPool | None = None
        self._starting: asyncio.Future[None] | None = None

    async def start(self) -> int:
        """Start the sandbox workers (once, whoever asks first); the number of workers."""
        if self._starting is None:
            workers, default_limits, network, weak = self._settings
            self._pool = SandboxPool(
                workers, default_limits=default_limits, network=network, allow_weak_isolation=weak
            )
            self._starting = asyncio.ensure_future(self._pool.start())
        await asyncio.shield(self._starting)
        return self._settings[0]

    async def execute(self, code: str, limits: Limits) -> ExecResult:
        started = time.monotonic()
        try:
            await self.start()  # the driver calls start() first; a call that overtakes it waits here
            assert self._pool is not None
            return await self._pool.execute(code, limits)
        except SandboxError as error:
            return _killed(f"the sandbox pool on this node cannot run it: {error}", started)

    async def stats(self) -> SandboxStats | None:
        return self._pool.stats if self._pool is not None else None

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()


_RemoteSandboxActor: Any = ray.remote(_SandboxActor)


@dataclass
class _Slot:
    """The actor of one node: ``actor`` is None while it is being replaced, and for good once ``gone``."""

    index: int
    node_id: str
    workers: int
    actor: Any = None  # ray.actor.ActorHandle
    generation: int = 0  # bumped whenever ``actor`` changes, so one death is handled once
    gone: bool = False
    in_flight: int = 0


class RayPool:
    """Sandbox pools as Ray actors, one per node (see the module docstring); use ``async with`` or
    ``start``/``close``.

    ``address`` is passed to ``ray.init`` when this process is not connected to Ray yet: ``"auto"`` (the
    cluster this machine belongs to), ``"ray://host:port"``/``"host:port"``, or ``"local"`` to start a
    private local instance (for tests and laptops). ``workers_per_node`` overrides the node's CPU count.
    """

    def __init__(
        self,
        address: str = "auto",
        *,
        workers_per_node: int | None = None,
        default_limits: Limits = DEFAULT_LIMITS,
        network: NetworkMode = "auto",
        allow_weak_isolation: bool = False,
    ) -> None:
        if workers_per_node is not None and (
            isinstance(workers_per_node, bool)
            or not isinstance(workers_per_node, int)
            or workers_per_node < 1
        ):
            raise ValueError(
                f"workers_per_node: must be a positive integer or None, got {workers_per_node!r}"
            )
        if network not in NETWORK_MODES:
            raise ValueError(f"network: must be one of {', '.join(NETWORK_MODES)}, got {network!r}")
        default_limits.check_within(MAX_LIMITS)
        self.address = address
        self.workers_per_node = workers_per_node
        self.default_limits = default_limits
        self._network: NetworkMode = network
        self.allow_weak_isolation = allow_weak_isolation
        self._slots: list[_Slot] = []
        self._state: Literal["new", "started", "closed"] = "new"
        self._owns_ray = False
        self._changed: asyncio.Event | None = None  # set (and replaced) whenever a slot changes
        self._calls: set[asyncio.Task[ExecResult]] = set()
        self._repairs: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._restarts = 0

    # ---- stats ------------------------------------------------------------------------------------

    @property
    def actors_alive(self) -> int:
        """Actors that are up or coming up (not known dead)."""
        return sum(slot.actor is not None for slot in self._slots)

    @property
    def actor_restarts(self) -> int:
        """Replacement actors created after one died."""
        return self._restarts

    @property
    def calls_in_flight(self) -> int:
        """Calls sent to an actor and not answered yet."""
        return self._in_flight

    @property
    def capacity(self) -> int:
        """Sandbox workers across the actors not known dead: how many calls can run at once."""
        return sum(slot.workers for slot in self._slots if slot.actor is not None)

    @property
    def actors(self) -> list[Any]:
        """The actor handles by index; None where an actor is dead or being replaced."""
        return [slot.actor for slot in self._slots]

    @property
    def nodes(self) -> list[str]:
        """The Ray node ids that have (or had) an actor, by actor index."""
        return [slot.node_id for slot in self._slots]

    async def sandbox_stats(self) -> list[SandboxStats | None]:
        """Each actor's ``SandboxStats``, by actor index; None for an actor that is down or not answering."""

        async def one(slot: _Slot) -> SandboxStats | None:
            if slot.actor is None:
                return None
            try:
                return await asyncio.wait_for(slot.actor.stats.remote(), CLOSE_SECONDS)
            except (ray.exceptions.RayError, asyncio.TimeoutError):
                return None

        return list(await asyncio.gather(*(one(slot) for slot in self._slots)))

    # ---- life -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Ray and start one actor (and its sandbox workers) per node with CPUs; RayPoolError
        (and nothing left running) if none can be placed or one does not come up."""
        if self._state != "new":
            raise RayPoolError(f"the Ray pool is already {self._state}")
        self._state = "started"
        self._changed = asyncio.Event()
        try:
            if not ray.is_initialized():
                # Blocking, but only once at start-up; ray.init wants the main thread (signal handlers).
                options: dict[str, Any] = {"include_dashboard": False} if self.address == "local" else {}
                await _check_reachable(self.address)
                try:
                    ray.init(address=self.address, **options)
                except Exception as error:
                    raise RayPoolError(f"cannot connect to Ray at {self.address!r}: {error}") from error
                self._owns_ray = True
            nodes = await asyncio.to_thread(ray.nodes)
            for node in nodes:
                cpus = int(node.get("Resources", {}).get("CPU", 0))
                if node.get("Alive") and cpus > 0:  # a node without CPUs (a head kept free) runs nothing
                    workers = self.workers_per_node or cpus
                    self._slots.append(_Slot(len(self._slots), node["NodeID"], workers))
            if not self._slots:
                raise RayPoolError(f"the Ray cluster at {self.address!r} has no alive node with CPUs")
            for slot in self._slots:
                slot.actor = self._create_actor(slot)
            starts = [slot.actor.start.remote() for slot in self._slots]
            try:
                outcomes = await asyncio.wait_for(
                    asyncio.gather(*starts, return_exceptions=True), START_SECONDS
                )
            except asyncio.TimeoutError:
                raise RayPoolError(f"the sandbox actors did not start within {START_SECONDS:g} s") from None
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise RayPoolError(f"a sandbox actor did not start: {_summary(outcome)}") from outcome
        except BaseException:
            await self.close()
            raise
        log.info("Ray pool: %d sandbox actors, %d workers", len(self._slots), self.capacity)

    async def execute(self, code: str, limits: Limits | None = None) -> ExecResult:
        """Run ``code`` in the sandbox pool of the least-loaded node. A failing snippet, and a call lost
        with its actor, are verdicts, never exceptions; ValueError means limits above MAX_LIMITS or code
        above MAX_CODE_BYTES, and RayPoolError a pool that is not running."""
        limits = limits or self.default_limits
        limits.check_within(MAX_LIMITS)
        size = len(code.encode("utf-8", "surrogatepass"))
        if size > MAX_CODE_BYTES:
            raise ValueError(f"code: {size} bytes is above the maximum {MAX_CODE_BYTES}")
        if self._state != "started":
            raise RayPoolError("the Ray pool is not running; start it first (or use async with)")
        task = asyncio.ensure_future(self._execute(code, limits))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        # A cancelled caller leaves the call to finish, so the load counts stay true.
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Stop every actor's sandbox workers (running calls are answered "killed"), kill the actors, and
        shut Ray down if ``start`` started it. Safe to call twice."""
        if self._state == "closed":
            return
        self._state = "closed"
        self._notify()
        for repair in self._repairs:
            repair.cancel()
        await asyncio.gather(*self._repairs, return_exceptions=True)
        actors = [slot.actor for slot in self._slots if slot.actor is not None]
        with contextlib.suppress(asyncio.TimeoutError):
            stops = [actor.close.remote() for actor in actors]
            await asyncio.wait_for(asyncio.gather(*stops, return_exceptions=True), CLOSE_SECONDS)
        for actor in actors:
            _kill(actor)
        await asyncio.gather(*self._calls, return_exceptions=True)
        for slot in self._slots:
            slot.actor = None
        if self._owns_ray:
            self._owns_ray = False
            ray.shutdown()

    async def __aenter__(self) -> RayPool:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ---- calls ------------------------------------------------------------------------------------

    async def _execute(self, code: str, limits: Limits) -> ExecResult:
        started = time.monotonic()
        slot = await self._pick()
        if slot is None:
            why = (
                "the Ray pool was closed"
                if self._state == "closed"
                else "no Ray node has a live sandbox actor"
            )
            return _killed(f"{why}; the call was not run", started)
        actor, generation = slot.actor, slot.generation
        slot.in_flight += 1
        self._in_flight += 1
        try:
            return await actor.execute.remote(code, limits)
        except ray.exceptions.ActorUnavailableError as error:  # may come back; a later call finds out
            return _killed(f"{self._where(slot)}: its Ray actor is unreachable ({_summary(error)})", started)
        except (
            ray.exceptions.RayActorError,  # ActorDiedError and its kin
            ray.exceptions.ActorUnschedulableError,
            ray.exceptions.NodeDiedError,
        ) as error:
            if self._state == "closed":
                return _killed("the Ray pool was closed while it ran", started)
            self._lost(slot, generation, error)
            why = f"its Ray actor died ({_summary(error)}); the call was not re-run"
            return _killed(f"{self._where(slot)}: {why}", started)
        except ray.exceptions.RayError as error:
            return _killed(f"{self._where(slot)}: Ray failed the call ({_summary(error)})", started)
        finally:
            slot.in_flight -= 1
            self._in_flight -= 1

    async def _pick(self) -> _Slot | None:
        """The slot with the least load per worker (ties: lowest index); waits while every actor is being
        replaced; None once none is left or the pool is closed."""
        while self._state == "started":
            best: _Slot | None = None
            for slot in self._slots:
                if slot.actor is not None and (
                    best is None or slot.in_flight * best.workers < best.in_flight * slot.workers
                ):
                    best = slot
            if best is not None:
                return best
            if all(slot.gone for slot in self._slots):
                return None
            assert self._changed is not None
            await self._changed.wait()
        return None

    def _where(self, slot: _Slot) -> str:
        return f"sandbox actor {slot.index} on Ray node {slot.node_id[:12]}"

    # ---- repair -----------------------------------------------------------------------------------

    def _lost(self, slot: _Slot, generation: int, error: BaseException) -> None:
        """The actor a call went to (``generation`` of ``slot``) died: replace it, once."""
        if slot.generation != generation or self._state != "started":
            return  # another call saw this death first, or the pool is closing
        slot.generation += 1
        slot.actor = None
        log.warning("%s died; replacing it: %s", self._where(slot), _summary(error))
        repair = asyncio.ensure_future(self._replace(slot))
        self._repairs.add(repair)
        repair.add_done_callback(self._repairs.discard)
        self._notify()

    async def _replace(self, slot: _Slot) -> None:
        """Start a new actor on the slot's node and put it in once its sandbox is up; after
        REPLACE_ATTEMPTS failed starts, or once the node is gone, the node leaves the pool."""
        for attempt in range(REPLACE_ATTEMPTS):
            if attempt:
                await asyncio.sleep(REPLACE_BACKOFF_S * attempt)
            try:
                nodes = await asyncio.to_thread(ray.nodes)
            except Exception as error:  # the cluster itself is unreachable: try again
                log.warning("Ray pool: cannot list the nodes: %s", error)
                continue
            if not any(node.get("NodeID") == slot.node_id and node.get("Alive") for node in nodes):
                log.warning("%s is not replaced: its node is gone", self._where(slot))
                break
            actor = self._create_actor(slot)
            try:
                await asyncio.wait_for(actor.start.remote(), START_SECONDS)
            except (ray.exceptions.RayError, asyncio.TimeoutError) as error:
                _kill(actor)
                log.warning("%s: a replacement did not start: %s", self._where(slot), _summary(error))
                continue
            except asyncio.CancelledError:  # close() while it started
                _kill(actor)
                raise
            slot.generation += 1
            slot.actor = actor
            self._restarts += 1
            self._notify()
            return
        slot.gone = True
        log.warning("%s: its node leaves the pool", self._where(slot))
        self._notify()

    def _create_actor(self, slot: _Slot) -> Any:
        return _RemoteSandboxActor.options(
            num_cpus=ACTOR_CPUS,
            max_concurrency=MAX_CONCURRENCY,
            max_restarts=0,  # the pool replaces a dead actor itself, and never re-runs its calls
            max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node_id, soft=False),
        ).remote(slot.workers, self.default_limits, self._network, self.allow_weak_isolation)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()


async def _check_reachable(address: str) -> None:
    """RayPoolError if ``address`` names a host:port nobody listens on: ray.init would retry it for many
    minutes instead of failing."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", "local" or something ray.init understands better than we do
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port)), CONNECT_SECONDS
        )
    except (OSError, asyncio.TimeoutError) as error:
        raise RayPoolError(
            f"cannot connect to Ray at {address!r}: {host}:{port} does not answer ({error})"
        ) from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _kill(actor: Any) -> None:
    with contextlib.suppress(Exception):  # already dead, or Ray is going away: nothing to kill
        ray.kill(actor, no_restart=True)


def _summary(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def _killed(why: str, started: float) -> ExecResult:
    return ExecResult.abandoned(f"ray pool: {why}", started)
