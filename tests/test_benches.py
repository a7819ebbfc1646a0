"""Every benchmark runs at CI size (`--quick`) and prints its headline against a same-run baseline."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

BENCHES = {
    "rollout_sim_speed.py": "speedup vs token-by-token",
    "telemetry_overhead.py": "headline:",
    "rollout_balance.py": "headline:",
    "dispatch_throughput.py": "kv_aware:",
    "tool_burst.py": "headline:",
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(BENCHES))
def test_the_benchmark_runs_quick_and_prints_its_headline(script: str) -> None:
    path = ROOT / "bench" / script
    if not path.exists():
        pytest.fail(f"bench/{script} is missing")
    done = subprocess.run([sys.executable, str(path), "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert BENCHES[script] in done.stdout, done.stdout
