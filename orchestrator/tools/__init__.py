"""Sandboxed code execution for tool calls and reward checks (see ``orchestrator.tools.api``)."""
