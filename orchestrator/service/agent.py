"""``orch agent``: one node's GPU telemetry source, exported for Prometheus until stopped."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import generate_latest

from orchestrator.httpguard import GuardConfig
from orchestrator.telemetry.exporter import Agent

__all__ = ["gpu_agent", "scrape_once", "serve_agent"]


def gpu_agent(node: str, interval: float, *, simulate: bool = False, dcgm_url: str | None = None) -> Agent:
    """An agent reading 8 simulated GPUs, a dcgm-exporter's ``/metrics``, or NVML (the default)."""
    if simulate:
        from orchestrator.sim.gpu_source import SimulatedGpuSource

        source: Any = SimulatedGpuSource(node)
    elif dcgm_url:
        from orchestrator.telemetry.dcgm import DcgmSource

        source = DcgmSource(dcgm_url, node)
    else:
        from orchestrator.telemetry.nvml import NvmlSource

        source = NvmlSource(node)
    return Agent(source, interval=interval)


def scrape_once(agent: Agent) -> str:
    """One sample of every GPU in the Prometheus text format; the agent is stopped."""
    agent.sample_once()
    text = generate_latest(agent.registry).decode()
    agent.stop()
    return text


def serve_agent(
    agent: Agent,
    port: int,
    host: str,
    ready: Callable[[str, int], None],
    guard: GuardConfig | None = None,
) -> None:
    """Sample and serve ``/metrics`` until Ctrl-C or SIGTERM (a DaemonSet pod's stop); ``ready(url, gpus)``
    is called once it listens (a port in use raises ``PortUnavailable`` before)."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        agent.start()
        server = agent.serve(port, host, guard)
        ready(server.url, len(agent.latest()))
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()
