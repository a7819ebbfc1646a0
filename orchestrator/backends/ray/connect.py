"""Finding the Ray cluster: ``ORCH_RAY_ADDRESS``, else a local head, started as its own daemon if none runs.

The head started here is ``ray start --head`` (a daemon of its own, not a child of the controller), so a
killed controller does not take its workloads with it; a restarted controller connects to it again.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import ray

from orchestrator.errors import OrchError

__all__ = ["ADDRESS_ENV", "connect"]

ADDRESS_ENV = "ORCH_RAY_ADDRESS"


def connect(address: str | None = None) -> None:
    """``ray.init`` against ``address`` / ``ORCH_RAY_ADDRESS`` / a local head (started if none)."""
    if ray.is_initialized():
        return
    address = address or os.environ.get(ADDRESS_ENV, "").strip() or None
    if address is not None:
        ray.init(address=address, log_to_driver=False)
        return
    try:
        ray.init(address="auto", log_to_driver=False)
    except ConnectionError:
        _start_local_head()
        ray.init(address="auto", log_to_driver=False)


def _start_local_head() -> None:
    program = shutil.which("ray")
    if program is None:
        raise OrchError(
            f"ray: no `ray` program to start a local head; install orch[ray] or set {ADDRESS_ENV}"
        )
    done = subprocess.run(
        [program, "start", "--head", "--disable-usage-stats", "--include-dashboard=false"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise OrchError(
            f"ray: `ray start --head` failed ({tail[0]}); start one yourself or set {ADDRESS_ENV}"
        )
