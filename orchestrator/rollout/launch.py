"""Moved to ``orchestrator.spec.launch`` (pure, from the spec alone, so the Kubernetes adapter may use it)."""

from orchestrator.spec.launch import EngineLaunch, engine_launch

__all__ = ["EngineLaunch", "engine_launch"]
