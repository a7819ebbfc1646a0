"""What the rollout side needs of an inference engine: the ``InferenceEngine`` protocol, its load and errors.

``HttpEngine`` (an OpenAI-compatible server: vLLM, SGLang) implements it; an engine reached another way
(a Ray actor) can too. The flight ledger, the balancer and the router talk to engines only through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.errors import OrchError

__all__ = ["COMPLETIONS", "EngineLoad", "EngineRejected", "EngineUnavailable", "InferenceEngine"]

COMPLETIONS = "/v1/completions"


class EngineUnavailable(OrchError):
    """The engine did not answer, dropped the connection or answered 5xx: retry elsewhere."""


class EngineRejected(OrchError):
    """The engine answered 4xx: the request itself is wrong, so no other engine would take it."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"engine rejected the request with HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class EngineLoad:
    """What a dispatcher sees of an engine: the same figures vLLM and SGLang export on /metrics."""

    running: int
    waiting: int
    kv_used_tokens: int
    kv_total_tokens: int
    tokens_per_s: float


class InferenceEngine(Protocol):
    """An engine that serves completions and reports its load."""

    @property
    def base_url(self) -> str:
        """Where the engine is, for logs and error messages."""
        ...

    @property
    def kv_total_tokens(self) -> int:
        """The KV cache size configured for it, used where the engine does not report its own."""
        ...

    async def complete(self, payload: dict[str, Any], path: str = COMPLETIONS) -> dict[str, Any]:
        """The JSON answer to ``payload``; ``EngineUnavailable`` (retry elsewhere) or ``EngineRejected``."""
        ...

    async def load(self) -> EngineLoad:
        """Its current load; ``EngineUnavailable`` when it reports none."""
        ...
