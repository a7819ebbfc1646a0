"""Which port each engine of a new attempt listens on: pure, decided with the placement.

Engines that share a node (a Ray node, one box) must not share a port; the engines of other runs' live
attempts, and of this run's, are on the nodes already. Each engine takes the lowest port from
``rollout.engine.port`` upwards that no live engine on its node holds, so a run alone on a box gets
``port``, ``port + 1``, … as before. The port is recorded in the engine's env (``ENGINE_PORT_ENV``) and
the trainer's (``ENGINE_PORTS_ENV``, by engine index), so it is in SQL and a restarted controller or a
relaunched member finds the same one. Ports held by processes orch did not start are not known here:
``rollout.engine.port`` is the operator's choice of a free range.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from orchestrator.records import Workload

__all__ = [
    "ENGINE_PORTS_ENV",
    "ENGINE_PORT_ENV",
    "ENGINE_URLS_ENV",
    "MAX_PORT",
    "assign_engine_ports",
    "ports_in_use",
]

ENGINE_PORT_ENV = "ORCH_ENGINE_PORT"  # an engine's port
ENGINE_PORTS_ENV = "ORCH_ENGINE_PORTS"  # the trainer's view: every engine's port, by engine index
ENGINE_URLS_ENV = "ORCH_ENGINE_URLS"  # the trainer's view: every engine's base URL, by engine index
MAX_PORT = 65535


def ports_in_use(workloads: Iterable[Workload]) -> dict[str, frozenset[int]]:
    """Per node, the ports held by the live engines among ``workloads``."""
    held: dict[str, set[int]] = {}
    for workload in workloads:
        port = workload.env.get(ENGINE_PORT_ENV, "")
        if workload.status.live and port.isdigit():
            held.setdefault(workload.node, set()).add(int(port))
    return {node: frozenset(ports) for node, ports in held.items()}


def assign_engine_ports(
    base: int, engine_nodes: Sequence[str], taken: Mapping[str, frozenset[int]]
) -> list[int]:
    """The port of engine ``i`` on node ``engine_nodes[i]``: the lowest from ``base`` up that is free on
    that node (``taken``, plus the engines assigned before it). ``ValueError`` past ``MAX_PORT``."""
    used = {node: set(ports) for node, ports in taken.items()}
    ports = []
    for node in engine_nodes:
        held = used.setdefault(node, set())
        port = base
        while port in held:
            port += 1
        if port > MAX_PORT:
            raise ValueError(f"no free engine port from {base} up on node {node}")
        held.add(port)
        ports.append(port)
    return ports
