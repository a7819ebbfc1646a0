"""Shared by the Ray tests: a local Ray for one test module, waiting, process checks, the quickstart spec."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
import yaml

from orchestrator.backends.ray.cluster import NAMESPACE, RayCluster
from orchestrator.spec import load_spec_data
from tests.process_checks import alive, describe, processes_mentioning, until, wait_gone

__all__ = [
    "ROOT",
    "alive",
    "describe",
    "local_ray",
    "member_pid",
    "member_status",
    "processes_mentioning",
    "quickstart_spec",
    "until",
    "wait_gone",
]

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def local_ray(log_dir: Path) -> Iterator[RayCluster]:
    """A Ray head in this process: 2 CPUs, 4 logical GPUs, one node labelled pool ``gpu``."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        num_cpus=2,
        num_gpus=4,
        labels={"orch.dev/pool": "gpu"},
        include_dashboard=False,
        log_to_driver=False,
        namespace=NAMESPACE,
    )
    try:
        yield RayCluster(log_dir=str(log_dir))
    finally:
        ray.shutdown()


def member_pid(name: str) -> int:
    """The pid of the process a member's actor runs now."""
    return int(ray.get(ray.get_actor(name, namespace=NAMESPACE).status.remote(), timeout=30)["pid"])


def member_status(name: str) -> dict[str, Any]:
    return dict(ray.get(ray.get_actor(name, namespace=NAMESPACE).status.remote(), timeout=30))


def quickstart_spec(
    tmp_path: Path, *, engine_flags: str = "", port: int = 19410
) -> tuple[Path, dict[str, Any]]:
    """``examples/ray-quickstart.yaml`` written under ``tmp_path`` with its outputs there: checkpoints in
    ``checkpoints/``, the trainer's steps in ``work/``, ``engine_flags`` appended to the engines' command."""
    data = load_spec_data(ROOT / "examples" / "ray-quickstart.yaml")  # ./ paths made absolute
    data["checkpoint"]["uri"] = (tmp_path / "checkpoints").as_uri()
    data["trainer"]["env"] = {"ORCH_WORK_DIR": str(tmp_path / "work")}
    engine = data["rollout"]["engine"]
    engine["port"] = port
    if engine_flags:
        engine["command"] = f"{engine['command']} {engine_flags}"
    spec_file = tmp_path / "ray-quickstart.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    return spec_file, data
