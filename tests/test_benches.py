"""Every benchmark runs at CI size (`--quick`) and prints its headline against a same-run baseline."""

from __future__ import annotations

import functools
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BENCHES = {
    "admission_throughput.py": "headline:",
    "rollout_sim_speed.py": "speedup vs token-by-token",
    "telemetry_overhead.py": "estimated (fake NVML with published call costs)",
    "rollout_balance.py": "headline:",
    "dispatch_throughput.py": "kv_aware:",
    "tool_burst.py": "headline:",
    "worker_overhead.py": "headline: at 1 in flight orch adds",
}


@functools.cache
def quick_run(script: str) -> subprocess.CompletedProcess[str]:
    """``bench/SCRIPT --quick``, run once per test session (the tests that read its figures share it)."""
    path = ROOT / "bench" / script
    if not path.exists():
        pytest.fail(f"bench/{script} is missing")
    return subprocess.run([sys.executable, str(path), "--quick"], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(BENCHES))
def test_the_benchmark_runs_quick_and_prints_its_headline(script: str) -> None:
    done = quick_run(script)
    assert done.returncode == 0, done.stdout + done.stderr
    assert BENCHES[script] in done.stdout, done.stdout


def run_telemetry_bench(*flags: str) -> subprocess.CompletedProcess[str]:
    script = ROOT / "bench" / "telemetry_overhead.py"
    return subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=300)


def nvml_has_a_gpu() -> bool:
    from orchestrator.telemetry.nvml import NvmlSource, NvmlUnavailable

    try:
        source = NvmlSource("probe")
    except NvmlUnavailable:
        return False
    try:
        return bool(source.samples())
    finally:
        source.close()


@pytest.mark.slow
def test_the_telemetry_bench_on_the_fake_nvml_estimates_and_never_says_met() -> None:
    if nvml_has_a_gpu():
        pytest.skip("a GPU node: the fake-NVML default still runs, but this test is about GPU-less machines")
    done = quick_run("telemetry_overhead.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ComputeRunningProcesses 4500 us" in done.stdout  # the published costs are charged
    verdicts = [line for line in done.stdout.splitlines() if line.startswith(("headline:", "baseline:"))]
    assert len(verdicts) == 2, done.stdout
    for line in verdicts:
        assert "estimated (fake NVML with published call costs)" in line, line
        assert not re.search(r"\bmet\b", line, re.IGNORECASE), line
    headline = verdicts[0]
    assert "against the goal < 1% of one core" in headline, headline


@pytest.mark.slow
def test_the_telemetry_bench_refuses_real_without_a_gpu_in_one_line() -> None:
    if nvml_has_a_gpu():
        pytest.skip("this node has an NVIDIA GPU: --real measures here")
    done = run_telemetry_bench("--quick", "--real")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        "telemetry_overhead: --real needs an NVIDIA driver and GPU on this node (NVML: "
    )
    assert lines[0].endswith("; run without --real for the estimate")


def rate_of(line: str) -> float:
    """The ``= N/s`` figure of a bench line."""
    found = re.search(r"= +([\d.]+)/s", line)
    assert found, line
    return float(found.group(1))


@pytest.mark.slow
def test_the_tool_burst_bench_measures_orch_against_the_fork_ceiling_and_both_baselines() -> None:
    done = quick_run("tool_burst.py")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    orch, ceiling = rate_of(lines["orch"]), rate_of(lines["ceiling"])
    for side in ("orch", "ceiling"):  # the same snippets, the same answers
        assert "verdicts {'error': 1, 'ok': 999}" in lines[side], lines[side]
    baselines = [line for line in done.stdout.splitlines() if line.startswith("baseline")]
    assert [re.search(r"`(.*)` per call", line).group(1) for line in baselines] == [  # type: ignore[union-attr]
        "python -c",
        "python -I -S -B -c",
    ]
    plain, fair = (rate_of(line) for line in baselines)

    headline = re.fullmatch(
        r"headline: orch ([\d.]+)/s = ([\d.]+) of the fork-per-call ceiling ([\d.]+)/s "
        r"\(goal >= 0\.8: (met|NOT met)\)",
        lines["headline:"],
    )
    assert headline, lines["headline:"]
    assert float(headline.group(1)) == pytest.approx(orch, abs=0.051)
    assert float(headline.group(3)) == pytest.approx(ceiling, abs=0.051)
    fraction = float(headline.group(2))
    assert fraction == pytest.approx(orch / ceiling, abs=0.006)
    assert headline.group(4) == ("met" if orch / ceiling >= 0.8 else "NOT met")

    assert lines["lost:"] == "lost: 0 of 1000 accepted calls never answered (goal 0: met)"
    reported = re.fullmatch(
        r"reported: ([\d.]+)x the throughput of `python -I -S -B -c` per call \(fair: .*\), "
        r"([\d.]+)x that of `python -c` \(no goal\)",
        lines["reported:"],
    )
    assert reported, lines["reported:"]
    assert float(reported.group(1)) == pytest.approx(orch / fair, rel=0.01, abs=0.051)
    assert float(reported.group(2)) == pytest.approx(orch / plain, rel=0.01, abs=0.051)


@pytest.mark.slow
def test_the_dispatch_bench_heads_with_64_engines_and_holds_the_baseline_to_the_same_goals() -> None:
    done = quick_run("dispatch_throughput.py")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    spec = re.search(
        r"kv_aware: at 64 engines \(examples/rstar2-math.yaml's size\) orch ([\d,]+) decisions/s "
        r"vs scan-all ([\d,]+)/s: ([\d.]+)× \(goal ≥ 1.0× the baseline: (met|NOT met)\)",
        out,
    )
    assert spec, out
    ours, naive, ratio = (float(spec[i].replace(",", "")) for i in (1, 2, 3))
    assert ratio == pytest.approx(ours / naive, abs=0.006)
    assert (spec[4] == "met") == (ratio >= 1.0)
    assert re.search(r"kv_aware: at \d+ engines \(the best size\) orch [\d,]+ decisions/s vs scan-all", out)
    for count in (64, 256):
        rate = re.search(
            rf"goal ≥ 50,000 decisions/s at {count} engines: orch ([\d,]+): (met|NOT met); "
            r"scan-all baseline ([\d,]+): (met|NOT met)",
            out,
        )
        assert rate, out
        for figure, said in ((rate[1], rate[2]), (rate[3], rate[4])):
            assert (said == "met") == (float(figure.replace(",", "")) >= 50_000)
        p99 = re.search(
            rf"goal p99 < 1 ms at {count} engines: orch ([\d.]+) ms: (met|NOT met); "
            r"scan-all baseline ([\d.]+) ms: (met|NOT met)",
            out,
        )
        assert p99, out
        for figure, said in ((p99[1], p99[2]), (p99[3], p99[4])):
            assert (said == "met") == (float(figure) < 1.0)


@pytest.mark.slow
def test_the_rollout_balance_bench_figures_agree_with_its_table_and_bound() -> None:
    done = quick_run("rollout_balance.py")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    bound = float(re.search(r"lower bound ([\d.]+)s$", next(line for line in lines if line.strip())).group(1))  # type: ignore[union-attr]
    header = next(n for n, line in enumerate(lines) if line.startswith("policy "))
    rows: dict[str, list[str]] = {}
    for line in lines[header + 1 :]:
        if line.startswith(("tail:", "headline:")):
            break
        cells = line.split()
        rows[cells[0]] = cells
    assert {"static", "kv_aware", "kv_aware/whole"} <= set(rows)
    for policy, cells in rows.items():
        makespan, ratio = float(cells[2]), float(cells[3])
        assert makespan >= bound, f"{policy} ends before the lower bound"
        assert ratio == pytest.approx(makespan / bound, abs=0.006), policy
        assert 0 < float(cells[4]) <= 1, policy

    headline = next(line for line in lines if line.startswith("headline:"))
    kv, static, whole = (float(rows[p][2]) for p in ("kv_aware", "static", "kv_aware/whole"))

    def goal(pattern: str) -> tuple[float, str]:
        found = re.search(pattern, headline)
        assert found, (pattern, headline)
        return float(found.group(1)), found.group(2)

    ratios = {
        r"= ([\d.]+)x the lower bound [\d.]+s \(goal <= 1\.05x: (met|NOT met)\)": (
            kv / bound,
            lambda r: r <= 1.05,
        ),
        r"([\d.]+)x faster than the static even split.*?goal >= 1\.5x: (met|NOT met)\)": (
            static / kv,
            lambda r: r >= 1.5,
        ),
        r"([\d.]+)x faster than rStar2-Agent's whole-budget rule.*?goal >= 1\.2x: (met|NOT met)\)": (
            whole / kv,
            lambda r: r >= 1.2,
        ),
    }
    for pattern, (expected, met) in ratios.items():
        ratio, verdict = goal(pattern)
        assert ratio == pytest.approx(expected, abs=0.006), pattern
        assert verdict == ("met" if met(ratio) else "NOT met"), pattern
    preemptions, verdict = goal(r"(\d+) preemptions \(goal 0: (met|NOT met)\)")
    assert preemptions == int(rows["kv_aware"][5]) and verdict == ("met" if preemptions == 0 else "NOT met")


@pytest.mark.slow
def test_the_worker_overhead_bench_added_figures_agree_with_its_table_and_nothing_is_lost() -> None:
    done = quick_run("worker_overhead.py")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    rows: dict[tuple[int, str], list[float]] = {}
    for line in lines:
        row = re.fullmatch(
            r" *(\d+) (orch|direct) +(\d+) +(\d+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)", line
        )
        if row:
            rows[(int(row[1]), row[2])] = [float(cell) for cell in row.groups()[2:]]
    assert set(rows) == {(n, side) for n in (1, 64) for side in ("orch", "direct")}, done.stdout
    for in_flight in (1, 64):
        ours, theirs = rows[(in_flight, "orch")], rows[(in_flight, "direct")]
        assert ours[:2] == theirs[:2], "both sides ran the same rollouts and turns"
        for rollouts, turns, seconds, rate, p50, p99, cpu in (ours, theirs):
            assert turns >= rollouts > 0 and p99 >= p50 > 0 and cpu > 0
            assert rate == pytest.approx(turns / seconds, rel=0.01)
        at = next(line for line in lines if line.startswith(f"at {in_flight} in flight:"))
        found = re.fullmatch(
            r"at \d+ in flight: orch adds (-?[\d.]+) ms p50 and (-?[\d.]+) ms p99 per turn, (-?[\d.]+) us of "
            r"CPU per turn; orch ([\d.]+) turns/s = ([\d.]+) of direct ([\d.]+) turns/s \(reported\)",
            at,
        )
        assert found, at
        added50, added99, added_cpu, orate, ratio, drate = (float(found[i]) for i in range(1, 7))
        assert added50 == pytest.approx(ours[4] - theirs[4], abs=0.0011)
        assert added99 == pytest.approx(ours[5] - theirs[5], abs=0.0011)
        assert added_cpu == pytest.approx(ours[6] - theirs[6], abs=0.11)
        assert (orate, drate) == (ours[3], theirs[3])
        assert ratio == pytest.approx(orate / drate, abs=0.006)
    headline = re.fullmatch(
        r"headline: at 1 in flight orch adds (-?[\d.]+) ms p50 per turn \(orch ([\d.]+) ms vs direct "
        r"([\d.]+) ms, same run\) \(goal < 1 ms: (met|NOT met)\)",
        next(line for line in lines if line.startswith("headline:")),
    )
    assert headline, done.stdout
    added = float(headline[1])
    assert (float(headline[2]), float(headline[3])) == (rows[(1, "orch")][4], rows[(1, "direct")][4])
    assert added == pytest.approx(float(headline[2]) - float(headline[3]), abs=0.0011)
    assert headline[4] == ("met" if added < 1.0 else "NOT met")
    total = sum(rows[(n, "orch")][0] for n in (1, 64))
    assert f"same turns: {total:.0f} of {total:.0f} rollouts ended with the same transcript" in done.stdout
    assert "lost: 0 rollouts (goal 0: met)" in lines
    assert re.search(r"tool path: orch \(RecordingTools -> SandboxTools -> stub\) p50 [\d.]+ us", done.stdout)
