"""Properties of the admission pass over random clusters, queues, holders and candidates, and over random
arrival / finish / preemption sequences. The oracle (``tests.admission_builders``) is independent of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from orchestrator.core.admission import admission_pass, line_order
from orchestrator.core.placement import FreeMap, MemberRequest, NodeView, place_gang
from orchestrator.core.preemption import protected
from orchestrator.core.queueing import AdmissionResult, Admit, Candidate, Holder, QueueView
from tests.admission_builders import (
    fits_nodes,
    fits_quota,
    holder_from,
    make_nodes,
    make_queue,
    make_run,
    make_snapshot,
    node_violations,
    quota_violations,
    used_by,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def clusters(draw: st.DrawFn) -> list[NodeView]:
    nodes: list[NodeView] = []
    for pool in range(draw(st.integers(1, 3))):
        size = draw(st.sampled_from([4, 8]))
        nodes += make_nodes(draw(st.integers(1, 4)), f"p{pool}", size)
    return nodes


@st.composite
def queue_sets(draw: st.DrawFn, pools: Sequence[str]) -> list[QueueView]:
    queues = []
    for i in range(draw(st.integers(1, 3))):
        cohort = draw(st.sampled_from([None, "lab"]))
        nominal = {p: draw(st.sampled_from([0, 8, 16, 24, 32])) for p in pools}
        limits = {p: draw(st.sampled_from([None, 0, 4, 8])) for p in pools} if cohort else {}
        queues.append(
            make_queue(
                f"q{i}",
                nominal,
                cohort=cohort,
                borrowing_limit=limits,
                weight=draw(st.sampled_from([1.0, 2.0])),
                preempt_within_queue=draw(st.booleans()),
                reclaim_within_cohort=draw(st.sampled_from(["any", "lower-priority", "never"])),
                min_run_s=draw(st.sampled_from([0.0, 1000.0])),
            )
        )
    return queues


@st.composite
def runs(
    draw: st.DrawFn,
    name: str,
    nodes: Sequence[NodeView],
    queues: Sequence[QueueView],
    now: float,
    priorities: tuple[int, int] = (0, 4),
):
    """A gang in one pool, members of one size (so a fit on fewer free GPUs is a fit on more)."""
    node = draw(st.sampled_from(list(nodes)))
    per = draw(st.sampled_from([g for g in (1, 2, 4, 8) if g <= node.gpus]))
    count = draw(st.integers(1, 3))
    return (
        make_run(name)
        .queue(draw(st.sampled_from([q.name for q in queues])))
        .gpus(per * count, node.pool, per_member=per)
        .priority(draw(st.integers(*priorities)))
        .preemptible(draw(st.booleans()))
        .queued(now - draw(st.sampled_from([0.0, 100.0, 2000.0, 5000.0])))
        .admitted(now - draw(st.sampled_from([0.0, 500.0, 5000.0])))
    )


@st.composite
def worlds(draw: st.DrawFn, crowded: bool = False):
    """Nodes, queues, holders placed without over-commit (some stopping), candidates; now = 10,000.
    ``crowded``: more holders, most of them preemptible, and candidates of higher priority."""
    now = 10_000.0
    nodes = draw(clusters())
    queues = draw(queue_sets(sorted({n.pool for n in nodes})))
    holders: list[Holder] = []
    for i in range(draw(st.integers(4 if crowded else 0, 12))):
        run = draw(runs(f"h{i}", nodes, queues, now, priorities=(0, 2))).candidate()
        if crowded and draw(st.integers(0, 3)):
            run = replace(run, preemptible=True)
        placement = place_gang(run.members, FreeMap(nodes, used_by(holders)), make_queue("x").placement)
        if placement.ok and fits_quota(queues, holders, run):
            holder = holder_from(run, _admit(run, placement.nodes), run.queued_since)
            holders.append(replace(holder, stopping=draw(st.booleans()) and draw(st.booleans())))
    wanted = (2, 5) if crowded else (0, 4)
    candidates = [
        draw(runs(f"c{i}", nodes, queues, now, priorities=wanted)).candidate()
        for i in range(draw(st.integers(1, 6)))
    ]
    return nodes, queues, holders, candidates, now


def _admit(candidate: Candidate, nodes: Mapping[str, str]) -> Admit:
    return Admit(candidate.run_id, dict(nodes))


def check_pass(
    nodes: Sequence[NodeView],
    queues: Sequence[QueueView],
    holders: Sequence[Holder],
    candidates: Sequence[Candidate],
    now: float,
    result: AdmissionResult,
) -> list[Holder]:
    """Every invariant of one pass; returns the holders after it."""
    by_id = {c.run_id: c for c in candidates}
    for kind in sorted({w.kind for w in result.waiting} | ({"admit"} if result.admitted else set())):
        event(f"pass: {kind}")
    if result.preemptions:
        event("pass: preemption")
    decided = [a.run_id for a in result.admitted] + [w.run_id for w in result.waiting]
    assert sorted(decided) == sorted(by_id), "every candidate is admitted or waits, once"
    new = [holder_from(by_id[a.run_id], a, now) for a in result.admitted]
    for admit in result.admitted:
        for member in by_id[admit.run_id].members:
            assert admit.nodes[member.key] in {n.name for n in nodes if n.pool == member.pool}
    after = [*holders, *new]
    assert not node_violations(nodes, after)
    assert not quota_violations(queues, after)
    views = {q.name: q for q in queues}
    holder_of = {h.run_id: h for h in holders}
    victims = [p.victim for p in result.preemptions]
    assert len(victims) == len(set(victims))
    for preempt in result.preemptions:
        victim = holder_of[preempt.victim]
        assert victim.preemptible and not victim.stopping
        assert not protected(victim, views, now)
        assert preempt.by in by_id and preempt.victim in preempt.reason
    # A wait for quota or nodes is real: it does not fit the pass's final state either.
    nominated = [by_id[w.run_id] for w in result.waiting if w.kind == "stopping"]
    reserved = [Holder(c.run_id, c.queue, c.priority, False, c.gpus, {}, now) for c in nominated]
    nominated_pools = {p for c in nominated for p in c.gpus}
    final_used = used_by(after)
    for wait in result.waiting:
        candidate = by_id[wait.run_id]
        if wait.kind == "quota":
            assert not fits_quota(queues, [*after, *reserved], candidate), wait.reason
        if wait.kind == "nodes" and not nominated_pools & set(candidate.gpus):
            assert not fits_nodes(nodes, final_used, candidate), wait.reason
    # Priority within a queue: a run ahead in line waits only if it did not fit when it was tried.
    position = {w.run_id: w.position for w in result.waiting}
    for admit in result.admitted:
        a = by_id[admit.run_id]
        others = [h for h in after if h.run_id != a.run_id]
        for wait in result.waiting:
            if wait.queue != a.queue or wait.kind not in ("quota", "nodes"):
                continue
            w = by_id[wait.run_id]
            if position[w.run_id] and _ahead(w, a, views[a.queue], now):
                quota_ok = fits_quota(queues, [*others, *reserved], w)
                nodes_ok = fits_nodes(nodes, used_by(others), w) and not nominated_pools & set(w.gpus)
                assert not (quota_ok and nodes_ok), f"{w.run_id} fits but {a.run_id} went first"
    return after


def _ahead(w: Candidate, a: Candidate, queue: QueueView, now: float) -> bool:
    return line_order(w, queue, now) < line_order(a, queue, now)


@SETTINGS
@given(st.booleans().flatmap(lambda crowded: worlds(crowded=crowded)))
def test_one_pass_never_over_commits_and_every_wait_is_real(world) -> None:
    nodes, queues, holders, candidates, now = world
    result = admission_pass(
        make_snapshot(queues=queues, nodes=nodes, holders=holders, candidates=candidates, now=now)
    )
    check_pass(nodes, queues, holders, candidates, now, result)


@SETTINGS
@given(worlds(crowded=True))
def test_the_victims_of_a_lone_candidate_are_needed_and_enough(world) -> None:
    nodes, queues, holders, candidates, now = world
    candidate = candidates[0]
    result = admission_pass(
        make_snapshot(queues=queues, nodes=nodes, holders=holders, candidates=[candidate], now=now)
    )
    victims = [h for h in holders if h.run_id in {p.victim for p in result.preemptions}]
    stopping = [h for h in holders if h.stopping]

    def fits(released: list[Holder]) -> bool:
        gone = {h.run_id for h in released}
        rest = [h for h in holders if h.run_id not in gone]
        return fits_quota(queues, rest, candidate) and fits_nodes(nodes, used_by(rest), candidate)

    if fits([]):
        assert [a.run_id for a in result.admitted] == [candidate.run_id]
        return
    assert result.admitted == ()
    if not victims:
        return
    event(f"lone candidate: {len(victims)} victims")
    assert fits([*stopping, *victims]), "the victims free enough"
    for victim in victims:
        rest = [v for v in victims if v.run_id != victim.run_id]
        assert not fits([*stopping, *rest]), f"{victim.run_id} was not needed"
    views = {q.name: q for q in queues}
    for victim in victims:
        same_cohort = views[candidate.queue].cohort is not None and (
            views[victim.queue].cohort == views[candidate.queue].cohort
        )
        assert victim.priority < candidate.priority or same_cohort


@SETTINGS
@given(
    lender_nodes=st.integers(1, 3),
    borrower_nodes=st.integers(0, 2),
    wanted=st.integers(1, 3),
    priorities=st.lists(st.integers(0, 5), min_size=5, max_size=5),
)
def test_a_borrowing_queue_gives_back_what_the_lender_needs_of_its_nominal(
    lender_nodes: int, borrower_nodes: int, wanted: int, priorities: list[int]
) -> None:
    wanted = min(wanted, lender_nodes)
    nodes = make_nodes(lender_nodes + borrower_nodes)
    queues = [
        make_queue("a", 8 * lender_nodes, cohort="lab"),
        make_queue("b", 8 * borrower_nodes, cohort="lab"),
    ]
    holders = [
        make_run(f"b{i}").queue("b").priority(priorities[i]).on({node.name: 8}).admitted(-1000 - i).holder()
        for i, node in enumerate(nodes)
    ]
    candidate = make_run("x").queue("a").gpus(8 * wanted).priority(0).candidate()
    snapshot = make_snapshot(queues=queues, nodes=nodes, holders=holders, candidates=[candidate])
    result = admission_pass(snapshot)
    assert len(result.preemptions) == wanted
    gone = {p.victim for p in result.preemptions}
    rest = [h for h in holders if h.run_id not in gone]
    again = admission_pass(make_snapshot(queues=queues, nodes=nodes, holders=rest, candidates=[candidate]))
    assert [a.run_id for a in again.admitted] == ["x"]


@SETTINGS
@given(
    weights=st.tuples(st.sampled_from([1.0, 2.0, 3.0]), st.sampled_from([1.0, 2.0, 3.0])),
    free=st.integers(1, 8),
)
def test_fair_share_gives_two_queues_gpus_in_proportion_to_their_weights(
    weights: tuple[float, float], free: int
) -> None:
    queues = [make_queue("a", 64, weight=weights[0]), make_queue("b", 64, weight=weights[1])]
    candidates = [make_run(f"{q}{i}").queue(q).queued(i).candidate() for q in "ab" for i in range(8)]
    snapshot = make_snapshot(queues=queues, nodes=make_nodes(free), candidates=candidates)
    got = [a.run_id[0] for a in admission_pass(snapshot).admitted]
    share = {q: got.count(q) / w for q, w in zip("ab", weights, strict=True)}
    step = {q: 1 / w for q, w in zip("ab", weights, strict=True)}
    assert len(got) == free
    for q, other in (("a", "b"), ("b", "a")):
        if got.count(q):
            assert share[q] - step[q] <= share[other] + 1e-9, (got, weights)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_arrivals_finishes_and_preemptions_keep_every_invariant_and_drain(data: st.DataObject) -> None:
    nodes = data.draw(clusters())
    queues = data.draw(queue_sets(sorted({n.pool for n in nodes})))
    now = 10_000.0
    holders: list[Holder] = []
    waiting: list[Candidate] = []
    count = 0
    arrivals = data.draw(st.integers(2, 8))
    for step in range(arrivals + 40):  # arrivals, then runs drain
        arriving = step < arrivals
        if not arriving and not waiting and not any(h.stopping for h in holders):
            break
        if arriving:
            for _ in range(data.draw(st.integers(0, 3))):
                run = data.draw(runs(f"r{count}", nodes, queues, now)).queued(now).candidate()
                count += 1
                if fits_quota(queues, [], run) and fits_nodes(nodes, {}, run):  # can ever run
                    waiting.append(run)
        result = admission_pass(
            make_snapshot(queues=queues, nodes=nodes, holders=holders, candidates=waiting, now=now)
        )
        holders = check_pass(nodes, queues, holders, waiting, now, result)
        admitted = {a.run_id for a in result.admitted}
        waiting = [c for c in waiting if c.run_id not in admitted]
        stopped = {p.victim for p in result.preemptions}
        # Victims asked in an earlier pass reached their checkpoint: released, back in their queue.
        for holder in [h for h in holders if h.stopping]:
            waiting.append(
                Candidate(
                    holder.run_id,
                    holder.queue,
                    holder.priority,
                    holder.preemptible,
                    now,
                    _members_of(holder, nodes),
                )
            )
        holders = [replace(h, stopping=True) if h.run_id in stopped else h for h in holders if not h.stopping]
        # Runs finish: at random while runs arrive, all of them (but the ones just admitted) afterwards.
        finishing = {
            h.run_id
            for h in holders
            if h.run_id not in admitted and not h.stopping and (not arriving or data.draw(st.booleans()))
        }
        holders = [h for h in holders if h.run_id not in finishing]
        now += data.draw(st.sampled_from([60.0, 700.0, 4000.0]))
    assert waiting == [], "once arrivals stop and runs finish, every run is admitted"


def _members_of(holder: Holder, nodes: Sequence[NodeView]) -> tuple[MemberRequest, ...]:
    """The gang a released victim asks for again: one member per node it held, same GPUs."""
    pool = {n.name: n.pool for n in nodes}
    return tuple(
        MemberRequest(f"trainer-{i}", pool[node], gpus, index=i)
        for i, (node, gpus) in enumerate(sorted(holder.nodes.items()))
    )
