"""What a dispatcher's caller sees: an engine's reported state, a rollout turn to place, the protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Dispatcher", "EngineState", "Request"]


@dataclass(frozen=True)
class EngineState:
    """What an inference engine last reported about itself."""

    engine: int  # index 0..n-1
    kv_total_tokens: int
    kv_free_tokens: int | None = None  # as the engine last reported; None = unknown
    running: int = 0
    waiting: int = 0
    healthy: bool = True
    utilization_ratio: float | None = None  # the GPU's, from NVML; breaks ties in in-flight counts

    def __post_init__(self) -> None:
        if self.engine < 0:
            raise ValueError(f"engine index must be >= 0, got {self.engine}")
        if self.kv_total_tokens < 0:
            raise ValueError(
                f"engine {self.engine}: kv_total_tokens must be >= 0, got {self.kv_total_tokens}"
            )
        if self.utilization_ratio is not None and not 0 <= self.utilization_ratio <= 1:
            raise ValueError(
                f"engine {self.engine}: utilization_ratio must be in [0, 1], got {self.utilization_ratio}"
            )


@dataclass(frozen=True)
class Request:
    """One rollout turn to place on an engine."""

    request_id: int
    rollout_id: int
    turn: int
    prompt_tokens: int  # context to prefill
    max_new_tokens: int  # the most this request may generate (at most the remaining response budget)
    previous_engine: int | None = None
    priority: int = 0  # higher is placed first; equal priorities in submission order
    # The most KV cache this turn can hold: its context plus its longest possible answer. Computed once,
    # since every decision reads it.
    reservation: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0 or self.max_new_tokens < 0:
            raise ValueError(
                f"request {self.request_id}: token counts must be >= 0, got prompt {self.prompt_tokens}, "
                f"max_new {self.max_new_tokens}"
            )
        if self.rollout_id < 0:
            raise ValueError(f"request {self.request_id}: rollout_id must be >= 0, got {self.rollout_id}")
        object.__setattr__(self, "reservation", self.prompt_tokens + self.max_new_tokens)


class Dispatcher(Protocol):
    """A central priority queue in front of n engines, and the ledger of what each engine holds."""

    name: str

    def submit(self, request: Request) -> None:
        """Enqueue ``request`` (by priority, then FIFO)."""

    def assignments(self) -> list[tuple[Request, int]]:
        """Place what can be placed now, in queue order (priority, then submission); the rest stays queued."""

    def finished(self, request_id: int) -> None:
        """Release a request, whatever its ending; unknown or already-finished id → KeyError."""

    def engine_lost(self, engine: int) -> list[Request]:
        """Mark ``engine`` unhealthy; release and return its in-flight requests (caller resubmits)."""

    def update(self, state: EngineState) -> None:
        """Fresh telemetry for one engine (may restore health)."""

    def reserved_tokens(self, engine: int) -> int:
        """KV tokens reserved on ``engine`` by its in-flight requests."""

    def outstanding(self, engine: int) -> int:
        """In-flight requests on ``engine``."""

    def queued(self) -> int:
        """Requests submitted and neither placed nor cancelled."""
