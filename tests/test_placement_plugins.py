"""Placement plugins (filter, score) and the indexed gang search, checked against the exhaustive one."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.core.placement import (
    SCORES,
    FreeMap,
    MemberRequest,
    NodeView,
    PlacementPolicy,
    bind,
    place_all,
    place_gang,
    place_gang_exhaustive,
)
from orchestrator.core.placement.plugins import Affinity
from orchestrator.core.placement.topology import holds
from orchestrator.spec.queues import PLACEMENT_SCORES

# ---- the registry and the plugins -------------------------------------------------------------------


def test_the_registry_holds_exactly_the_plugins_a_queue_may_name() -> None:
    assert tuple(SCORES) == PLACEMENT_SCORES


def test_every_score_plugin_scores_between_0_and_100() -> None:
    for plugin in SCORES.values():
        for left in range(0, 300):
            for near in Affinity:
                assert 0 <= plugin.score(left, near) <= 100


def test_topology_scores_rise_strictly_with_affinity() -> None:
    points = [SCORES["topology"].score(0, near) for near in sorted(Affinity)]
    assert points == sorted(set(points))


def members(count: int, gpus: int, pool: str = "p", prefix: str = "m") -> list[MemberRequest]:
    return [MemberRequest(f"{prefix}{i}", pool, gpus, index=i) for i in range(count)]


def test_best_fit_fills_the_fullest_node_that_fits() -> None:
    nodes = [NodeView("a", "p", 8), NodeView("b", "p", 8), NodeView("c", "p", 8)]
    free = FreeMap(nodes, {"a": 2, "b": 6, "c": 0})
    placement = place_gang(members(1, 2), free, PlacementPolicy(scores=("best-fit",)))
    assert placement.nodes == {"m0": "b"}


def test_spread_takes_the_emptiest_node() -> None:
    nodes = [NodeView("a", "p", 8), NodeView("b", "p", 8), NodeView("c", "p", 8)]
    free = FreeMap(nodes, {"a": 2, "b": 6, "c": 3})
    placement = place_gang(members(1, 2), free, PlacementPolicy(scores=("spread",)))
    assert placement.nodes == {"m0": "a"}


def test_spread_puts_each_member_of_a_gang_on_a_fresh_node() -> None:
    nodes = [NodeView(f"n{i}", "p", 8) for i in range(4)]
    placement = place_gang(members(4, 1), FreeMap(nodes, {}), PlacementPolicy(scores=("spread",)))
    assert sorted(placement.nodes.values()) == ["n0", "n1", "n2", "n3"]


def racked_cluster() -> list[NodeView]:
    """Two zones of two racks of four 8-GPU nodes; node names interleave the racks so name order alone
    would scatter a gang."""
    return [
        NodeView(f"n{i:02d}", "p", 8, zone=f"z{i % 2}", rack=f"r{i % 4}")
        for i in range(16)  # rack r0: n00 n04 n08 n12 (zone z0), rack r1: n01 n05 … (zone z1), …
    ]


def test_topology_keeps_an_8_member_gang_in_the_one_rack_that_can_hold_it() -> None:
    nodes = racked_cluster()
    used = {node.name: 4 for node in nodes if node.rack != "r3"}  # only rack r3 has 4 whole nodes free
    policy = PlacementPolicy(scores=("topology", "best-fit"))
    placement = place_gang(members(8, 4), FreeMap(nodes, used), policy)
    assert placement.ok
    assert {next(n for n in nodes if n.name == name).rack for name in placement.nodes.values()} == {"r3"}
    # Best fit alone spreads the same gang over the half-used nodes of every rack.
    plain = place_gang(members(8, 4), FreeMap(nodes, used), PlacementPolicy(scores=("best-fit",)))
    assert len({next(n for n in nodes if n.name == name).rack for name in plain.nodes.values()}) > 1


def test_topology_keeps_a_gang_in_one_zone_when_no_rack_can_hold_it() -> None:
    nodes = racked_cluster()
    used = {"n01": 8, "n03": 8, "n05": 8}  # zone z1 keeps 5 whole nodes, z0 all 8; no rack has 6
    policy = PlacementPolicy(scores=("topology", "best-fit"))
    placement = place_gang(members(6, 8), FreeMap(nodes, used), policy)
    assert placement.ok
    zone = {node.name: node.zone for node in nodes}
    assert {zone[name] for name in placement.nodes.values()} == {"z0"}
    assert len(set(placement.nodes.values())) == 6
    # By name alone the gang would take n00 n02 n04 n06 n07 n08: both zones.
    plain = place_gang(members(6, 8), FreeMap(nodes, used), PlacementPolicy(scores=("best-fit",)))
    assert {zone[name] for name in plain.nodes.values()} == {"z0", "z1"}


def test_topology_puts_small_members_on_the_node_already_holding_the_gang() -> None:
    nodes = racked_cluster()
    placement = place_gang(members(4, 2), FreeMap(nodes, {}), PlacementPolicy(scores=("topology", "spread")))
    assert len(set(placement.nodes.values())) == 1


def test_the_holding_test_fits_the_largest_members_first() -> None:
    assert holds([0, 0, 0, 0, 2], [2, 2, 2, 2])  # two 4-GPU nodes take four 2-GPU members
    assert not holds([0, 0, 0, 3, 0], [2, 2, 2, 2])  # three 3-GPU nodes only take three
    assert holds([0, 0, 0, 0, 1, 0, 0, 0, 1], [4, 4, 4])
    assert not holds([0, 0, 0, 0, 0, 0, 0, 0, 1], [4, 4, 4])
    assert not holds([0, 1, 0], [2])  # one node with 1 GPU free does not take a 2-GPU member
    assert holds([5], [])


def test_an_unknown_plugin_is_refused() -> None:
    nodes = [NodeView("a", "p", 8)]
    try:
        place_gang(members(1, 1), FreeMap(nodes, {}), PlacementPolicy(scores=("nearest",)))
    except ValueError as error:
        assert "nearest" in str(error)
    else:
        raise AssertionError("an unknown plugin was accepted")


# ---- the indexed search against the exhaustive one --------------------------------------------------

POOLS = ("a", "b")


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[NodeView], dict[str, int]]:
    count = draw(st.integers(1, 14))
    nodes: list[NodeView] = []
    used: dict[str, int] = {}
    for i in range(count):
        gpus = draw(st.sampled_from((1, 2, 4, 8)))
        node = NodeView(
            f"n{draw(st.integers(0, 99)):02d}-{i}",  # names not in list order
            draw(st.sampled_from(POOLS)),
            gpus,
            ready=draw(st.booleans() | st.just(True)),
            zone=draw(st.sampled_from(("", "z1", "z2"))),
            rack=draw(st.sampled_from(("", "r1", "r2", "r3"))),
        )
        nodes.append(node)
        used[node.name] = draw(st.integers(0, gpus))
    return nodes, used


@st.composite
def gangs(draw: st.DrawFn, prefix: str = "m") -> list[MemberRequest]:
    out: list[MemberRequest] = []
    for i in range(draw(st.integers(1, 6))):
        pool = draw(st.sampled_from(POOLS))
        if out and draw(st.integers(0, 4)) == 0:
            host = draw(st.sampled_from([m for m in out if m.same_node_as is None]))
            out.append(MemberRequest(f"{prefix}{i}", host.pool, 0, same_node_as=host.key))
        else:
            out.append(MemberRequest(f"{prefix}{i}", pool, draw(st.integers(0, 8))))
    return out


policies = st.lists(st.sampled_from(PLACEMENT_SCORES), unique=True, max_size=3).map(
    lambda scores: PlacementPolicy(scores=tuple(scores))
)


def snapshot(free: FreeMap) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    return (
        {name: free.free(name) for name in free.nodes},
        {pool: free.pool_free(pool) for pool in POOLS},
        {pool: free.pool_capacity(pool) for pool in POOLS},
    )


def recount(free: FreeMap) -> tuple[dict[str, int], dict[str, int]]:
    ready = [node for node in free.nodes.values() if node.ready]
    return (
        {pool: sum(free.free(n.name) for n in ready if n.pool == pool) for pool in POOLS},
        {pool: sum(n.gpus for n in ready if n.pool == pool) for pool in POOLS},
    )


def check_fits(gang: list[MemberRequest], nodes: list[NodeView], before: dict[str, int], placement) -> None:
    """All members bound or none; no node given more GPUs than it had free; pools and readiness kept."""
    if not placement.ok:
        assert placement.nodes == {}
        return
    assert set(placement.nodes) == {member.key for member in gang}
    by_name = {node.name: node for node in nodes}
    asked: Counter[str] = Counter()
    for member in gang:
        node = by_name[placement.nodes[member.key]]
        assert node.ready and node.pool == member.pool
        if member.same_node_as is None:
            asked[node.name] += member.gpus
        else:
            assert placement.nodes[member.key] == placement.nodes[member.same_node_as]
    assert all(asked[name] <= before[name] for name in asked)


@settings(max_examples=400, deadline=None)
@given(clusters(), gangs(), policies)
def test_the_index_picks_what_the_exhaustive_scan_picks(cluster, gang, policy) -> None:
    nodes, used = cluster
    free = FreeMap(nodes, used)
    before = snapshot(free)
    fast = place_gang(gang, free, policy)
    assert snapshot(free) == before  # place_gang leaves the map as it was
    slow = place_gang_exhaustive(gang, free, policy)
    assert snapshot(free) == before
    assert fast == slow  # same nodes member by member (identical tie-breaks), or the same refusal
    check_fits(gang, nodes, before[0], fast)


@settings(max_examples=150, deadline=None)
@given(clusters(), st.lists(st.tuples(gangs(), policies), min_size=1, max_size=8))
def test_the_index_stays_right_as_gangs_are_bound_one_after_another(cluster, stream) -> None:
    nodes, used = cluster
    free = FreeMap(nodes, used)
    for number, (gang, policy) in enumerate(stream):
        rename = {m.key: f"g{number}-{m.key}" for m in gang}  # keys unique over the stream
        gang = [
            MemberRequest(rename[m.key], m.pool, m.gpus, m.same_node_as and rename[m.same_node_as])
            for m in gang
        ]
        before = snapshot(free)
        fast = place_gang(gang, free, policy)
        assert fast == place_gang_exhaustive(gang, free, policy)
        check_fits(gang, nodes, before[0], fast)
        if fast.ok:
            bind(gang, fast, free)
            after_bind = snapshot(free)
            for node, gpus in ((fast.nodes[m.key], m.gpus) for m in gang if m.same_node_as is None):
                free.give(node, gpus)
            assert place_gang(gang, free, policy, keep=True) == fast  # keep: found and bound at once
            assert snapshot(free) == after_bind
        else:
            assert place_gang(gang, free, policy, keep=True) == fast and snapshot(free) == before
        assert recount(free) == (snapshot(free)[1], snapshot(free)[2])


@settings(max_examples=200, deadline=None)
@given(clusters(), st.lists(st.tuples(st.integers(0, 13), st.integers(0, 8), st.booleans()), max_size=20))
def test_take_and_give_keep_pool_counters_and_the_index_true(cluster, moves) -> None:
    nodes, used = cluster
    free = FreeMap(nodes, used)
    names = list(free.nodes)
    for pick, gpus, give in moves:
        name = names[pick % len(names)]
        if give:
            free.give(name, gpus)
        elif gpus <= free._free[name]:
            free.take(name, gpus)
        assert recount(free) == (snapshot(free)[1], snapshot(free)[2])
    for gang_gpus in (1, 4, 8, 9, 12):
        for pool in POOLS:
            gang = members(3, gang_gpus, pool=pool)
            for scores in (("best-fit",), ("spread",), ("topology", "best-fit")):
                policy = PlacementPolicy(scores=scores)
                assert place_gang(gang, free, policy) == place_gang_exhaustive(gang, free, policy)


@settings(max_examples=200, deadline=None)
@given(clusters(), gangs())
def test_best_fit_places_a_gang_where_todays_place_all_does(cluster, gang) -> None:
    nodes, used = cluster
    nodes = list({node.name: node for node in nodes}.values())
    fast = place_gang(gang, FreeMap(nodes, used), PlacementPolicy(scores=("best-fit",)))
    legacy = place_all(gang, nodes, used)
    assert fast.ok == legacy.ok
    if fast.ok:
        assert fast.nodes == legacy.nodes
