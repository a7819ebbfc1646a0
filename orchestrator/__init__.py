"""orch: keeps every GPU busy while running agentic reinforcement-learning training."""

__version__ = "0.1.0"
