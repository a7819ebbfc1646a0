"""Engine ports are decided with the placement: no two live engines of one node share a port."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.backends.ray.launch import member_launch
from orchestrator.core.ports import ENGINE_PORT_ENV, ENGINE_PORTS_ENV, assign_engine_ports, ports_in_use
from orchestrator.records import WorkloadStatus
from tests.test_reconcile import SPEC, admit, make_run, make_snapshot, placed


def test_a_run_alone_gets_port_port_plus_one_and_so_on() -> None:
    assert assign_engine_ports(8000, ["n0", "n0", "n0"], {}) == [8000, 8001, 8002]
    assert assign_engine_ports(8000, ["n0", "n1"], {}) == [8000, 8000]  # other nodes, same port


def test_ports_held_on_a_node_are_skipped_there_only() -> None:
    taken = {"n0": frozenset({8000, 8002})}
    assert assign_engine_ports(8000, ["n0", "n0", "n1"], taken) == [8001, 8003, 8000]


@given(
    st.lists(st.sampled_from(["a", "b", "c"]), max_size=20),
    st.dictionaries(st.sampled_from(["a", "b"]), st.frozensets(st.integers(9000, 9010), max_size=6)),
)
def test_assigned_ports_never_collide_on_a_node(nodes: list[str], taken: dict[str, frozenset[int]]) -> None:
    ports = assign_engine_ports(9000, nodes, taken)
    for node in set(nodes):
        mine = [port for n, port in zip(nodes, ports, strict=True) if n == node]
        assert len(set(mine)) == len(mine) and not set(mine) & taken.get(node, frozenset())
        assert all(port >= 9000 for port in mine)


def test_the_placement_records_each_engines_port_and_the_trainer_gets_them_all() -> None:
    workloads = placed(make_run())
    engines = sorted((w for w in workloads if w.role == "engine"), key=lambda w: w.index)
    [trainer] = [w for w in workloads if w.role == "trainer"]
    base = SPEC.rollout.engine.port
    assert [int(w.env[ENGINE_PORT_ENV]) for w in engines] == [base + i for i in range(len(engines))]
    assert trainer.env[ENGINE_PORTS_ENV] == ",".join(w.env[ENGINE_PORT_ENV] for w in engines)


def test_a_second_run_on_the_same_node_gets_other_ports() -> None:
    first = placed(make_run())
    live = [replace(w, status=WorkloadStatus.RUNNING) for w in first]
    snapshot = make_snapshot(make_run(id="qs-2"), ports_by_others=ports_in_use(live))
    patch = admit(snapshot)
    mine = {int(w.env[ENGINE_PORT_ENV]) for w in patch.workloads if w.role == "engine"}
    theirs = {int(w.env[ENGINE_PORT_ENV]) for w in first if w.role == "engine"}
    assert mine and not mine & theirs
    # Released workloads free their ports.
    released = [replace(w, status=WorkloadStatus.DELETED) for w in first]
    assert ports_in_use(released) == {}


def test_a_ray_member_listens_on_its_recorded_port_and_the_trainer_calls_those() -> None:
    workloads = placed(make_run())
    engine = next(w for w in workloads if w.role == "engine" and w.index == 1)
    engine = replace(engine, env={**engine.env, ENGINE_PORT_ENV: "9123"})
    argv = member_launch(engine, SPEC).argv
    assert argv[argv.index("--port") + 1] == "9123"
    trainer = next(w for w in workloads if w.role == "trainer")
    trainer = replace(trainer, env={**trainer.env, ENGINE_PORTS_ENV: "9100,9123"})
    urls = member_launch(trainer, SPEC, mailbox="/tmp/m").env["ORCH_ENGINE_URLS"]
    assert urls == "http://127.0.0.1:9100,http://127.0.0.1:9123"
