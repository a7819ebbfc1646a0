"""Run all seven benchmarks at full size, one after another, in one run, and keep their output together.

Each bench runs as its own process (``python bench/<name>.py``, plus ``--quick`` with ``--quick``), in this
order, with nothing else of orch running; the log starts with what was measured on (commit, Python,
kernel, CPUs) so the README's figures can be traced to one run. The exit status is the first non-zero
one of a bench, if any (a bench exits non-zero only when it lost work, not for a goal it misses).

    python bench/run_all.py [--quick] [--log PATH]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCHES = (
    "rollout_sim_speed",
    "rollout_balance",
    "dispatch_throughput",
    "tool_burst",
    "telemetry_overhead",
    "worker_overhead",
    "admission_throughput",
)
HERE = Path(__file__).resolve().parent


def machine() -> str:
    """One line on what the figures were measured on."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"commit {commit}, Python {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} CPUs ({model})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each bench's CI size")
    parser.add_argument("--log", type=Path, default=None, help="also write everything to this file")
    args = parser.parse_args()
    log = args.log.open("w", encoding="utf-8") if args.log else None

    def say(text: str) -> None:
        print(text, flush=True)
        if log:
            log.write(text + "\n")
            log.flush()

    started = datetime.datetime.now(datetime.timezone.utc)
    say(f"# bench/run_all.py {'--quick ' if args.quick else ''}at {started:%Y-%m-%d %H:%M} UTC: {machine()}")
    status = 0
    for name in BENCHES:
        command = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if args.quick else [])]
        say(f"\n## {name}")
        began = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        say((done.stdout + done.stderr).rstrip())
        say(f"(exit {done.returncode}, {time.monotonic() - began:.0f} s)")
        status = status or done.returncode
    if log:
        log.close()
    sys.exit(status)


if __name__ == "__main__":
    main()
