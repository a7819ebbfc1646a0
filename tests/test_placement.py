"""Gang placement (all-or-nothing, best fit) and the members a run asks for. Pure: no database."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from orchestrator.core.placement import MemberRequest, NodeView, place_all
from orchestrator.core.reconcile import desired_members
from orchestrator.spec import RunSpec, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def nodes(count: int, pool: str = "h100", gpus: int = 8, prefix: str = "n") -> list[NodeView]:
    return [NodeView(f"{prefix}{i}", pool, gpus) for i in range(count)]


def gang(count: int, gpus: int = 8, pool: str = "h100") -> list[MemberRequest]:
    return [MemberRequest(f"trainer-{i}", pool, gpus, role="trainer", index=i) for i in range(count)]


def quickstart_spec(*, pool_gpus: int = 8, **trainer: Any) -> RunSpec:
    data = copy.deepcopy(yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text()))
    data["pools"]["node"]["gpus"] = pool_gpus
    data["trainer"].update(trainer)
    return parse_spec(data)


# ---- all or nothing ---------------------------------------------------------------------------------


def test_a_gang_that_fits_binds_every_member_to_its_own_node() -> None:
    placement = place_all(gang(4), nodes(4), used={})
    assert placement.ok
    assert placement.reason == ""
    assert sorted(placement.nodes) == [f"trainer-{i}" for i in range(4)]
    assert sorted(placement.nodes.values()) == ["n0", "n1", "n2", "n3"]


def test_a_pool_one_gpu_short_binds_nothing_and_says_why() -> None:
    placement = place_all(gang(4), nodes(4), used={"n3": 1})
    assert not placement.ok
    assert placement.nodes == {}
    assert "pool 'h100'" in placement.reason
    assert "31 of 32 GPUs free" in placement.reason
    assert "needs 32" in placement.reason


def test_a_gang_larger_than_the_pool_binds_nothing() -> None:
    placement = place_all(gang(3), nodes(2), used={})
    assert not placement.ok
    assert placement.nodes == {}
    assert "16 of 16 GPUs free" in placement.reason
    assert "needs 24" in placement.reason


def test_free_gpus_split_across_nodes_do_not_fit_a_whole_node_member() -> None:
    placement = place_all(gang(1), nodes(2), used={"n0": 4, "n1": 4})
    assert not placement.ok
    assert "8 of 16 GPUs free" in placement.reason
    assert "needs 8 on one node" in placement.reason


def test_a_pool_without_nodes_is_named() -> None:
    placement = place_all(gang(1, pool="a100"), nodes(2), used={})
    assert not placement.ok
    assert placement.reason == "pool 'a100' has no nodes"


def test_nodes_of_another_pool_are_never_used() -> None:
    cluster = nodes(1, pool="cpu", prefix="c") + nodes(1)
    placement = place_all(gang(1), cluster, used={})
    assert placement.nodes == {"trainer-0": "n0"}


# ---- scoring ----------------------------------------------------------------------------------------


def test_best_fit_prefers_the_fullest_node_that_fits() -> None:
    members = [MemberRequest("engine-0", "h100", 2)]
    placement = place_all(members, nodes(3), used={"n0": 2, "n1": 6, "n2": 7})
    assert placement.nodes == {"engine-0": "n1"}


def test_best_fit_keeps_whole_nodes_free_for_the_next_gang() -> None:
    members = [MemberRequest(f"engine-{i}", "h100", 1) for i in range(4)]
    placement = place_all(members, nodes(2), used={"n1": 4})
    assert set(placement.nodes.values()) == {"n1"}


def test_ties_go_to_the_first_node_by_name() -> None:
    placement = place_all(gang(1), list(reversed(nodes(3))), used={})
    assert placement.nodes == {"trainer-0": "n0"}


# ---- node state -------------------------------------------------------------------------------------


def test_not_ready_nodes_are_skipped() -> None:
    cluster = [NodeView("n0", "h100", 8, ready=False), NodeView("n1", "h100", 8)]
    placement = place_all(gang(1), cluster, used={})
    assert placement.nodes == {"trainer-0": "n1"}


def test_a_gang_that_needs_a_not_ready_node_waits_and_counts_only_ready_gpus() -> None:
    cluster = [NodeView("n0", "h100", 8, ready=False), NodeView("n1", "h100", 8)]
    placement = place_all(gang(2), cluster, used={})
    assert not placement.ok
    assert placement.nodes == {}
    assert "8 of 16 GPUs free on 1 ready node(s)" in placement.reason


def test_gpus_used_by_other_runs_are_respected() -> None:
    placement = place_all(gang(2), nodes(3), used={"n0": 8, "n1": 1})
    assert not placement.ok
    placement = place_all(gang(1), nodes(3), used={"n0": 8, "n1": 1})
    assert placement.nodes == {"trainer-0": "n2"}


def test_members_of_the_same_gang_do_not_share_gpus() -> None:
    members = [MemberRequest(f"engine-{i}", "h100", 3) for i in range(3)]
    placement = place_all(members, nodes(2), used={})
    assert placement.ok
    per_node: dict[str, int] = {}
    for node in placement.nodes.values():
        per_node[node] = per_node.get(node, 0) + 3
    assert all(used <= 8 for used in per_node.values())


# ---- colocation -------------------------------------------------------------------------------------


def test_colocated_members_land_on_their_hosts_node_using_no_gpus() -> None:
    members = [
        *gang(2),
        MemberRequest("engine-0", "h100", 0, same_node_as="trainer-0"),
        MemberRequest("engine-1", "h100", 0, same_node_as="trainer-1"),
    ]
    placement = place_all(members, nodes(2), used={})
    assert placement.ok
    assert placement.nodes["engine-0"] == placement.nodes["trainer-0"]
    assert placement.nodes["engine-1"] == placement.nodes["trainer-1"]
    assert placement.nodes["trainer-0"] != placement.nodes["trainer-1"]


def test_colocated_members_need_no_free_gpus_of_their_own() -> None:
    members = [
        *gang(1),
        *(MemberRequest(f"engine-{i}", "h100", 0, same_node_as="trainer-0") for i in range(8)),
    ]
    placement = place_all(members, nodes(1), used={})
    assert placement.ok
    assert set(placement.nodes.values()) == {"n0"}


# ---- what a run asks for ----------------------------------------------------------------------------


def test_the_quickstart_asks_for_one_trainer_node_and_colocated_engines() -> None:
    spec = load_spec(EXAMPLES / "quickstart.yaml")
    members = desired_members(spec, "qs-1", attempt=1)
    trainers = [m for m in members if m.role == "trainer"]
    engines = [m for m in members if m.role == "engine"]
    assert [(m.key, m.pool, m.gpus) for m in trainers] == [("qs-1-trainer-0-a1", "node", 8)]
    assert [m.key for m in engines] == [f"qs-1-engine-{i}-a1" for i in range(8)]
    assert all(m.gpus == 0 and m.same_node_as == "qs-1-trainer-0-a1" for m in engines)


def test_rstar2_asks_for_a_gang_of_eight_whole_nodes() -> None:
    spec = load_spec(EXAMPLES / "rstar2-math.yaml")
    members = desired_members(spec, "r2", attempt=3)
    trainers = [m for m in members if m.role == "trainer"]
    assert [m.key for m in trainers] == [f"r2-trainer-{i}-a3" for i in range(8)]
    assert {m.gpus for m in trainers} == {8}
    assert [m.index for m in trainers] == list(range(8))
    engines = [m for m in members if m.role == "engine"]
    assert len(engines) == 64
    assert engines[0].same_node_as == "r2-trainer-0-a3"
    assert engines[63].same_node_as == "r2-trainer-7-a3"
    hosts = [m.same_node_as for m in engines]
    assert all(hosts.count(f"r2-trainer-{i}-a3") == 8 for i in range(8))


def test_rstar2_fits_exactly_on_its_64_gpu_pool() -> None:
    spec = load_spec(EXAMPLES / "rstar2-math.yaml")
    placement = place_all(desired_members(spec, "r2", attempt=1), nodes(8), used={})
    assert placement.ok
    assert len(set(placement.nodes.values())) == 8
    assert not place_all(desired_members(spec, "r2", attempt=1), nodes(8), used={"n5": 1}).ok


def test_member_names_are_deterministic_per_attempt() -> None:
    spec = load_spec(EXAMPLES / "rstar2-math.yaml")
    first = [m.key for m in desired_members(spec, "r2", attempt=1)]
    assert first == [m.key for m in desired_members(spec, "r2", attempt=1)]
    second = [m.key for m in desired_members(spec, "r2", attempt=2)]
    assert not set(first) & set(second)


def test_a_trainer_of_partial_nodes_gets_ceil_gpus_over_8_members_whole_nodes_first() -> None:
    members = desired_members(quickstart_spec(pool_gpus=24, gpus=20), "qs", attempt=1)
    assert [m.gpus for m in members if m.role == "trainer"] == [8, 8, 4]
    assert [m.key for m in members if m.role == "trainer"] == [f"qs-trainer-{i}-a1" for i in range(3)]
