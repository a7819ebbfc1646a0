"""Shared by the Ray tests: a local Ray for one test module, waiting, process checks, the quickstart spec."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
import yaml

from orchestrator.backends.ray.cluster import NAMESPACE, RayCluster
from orchestrator.spec import load_spec_data

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


def until(condition: Callable[[], bool], seconds: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting{': ' + what if what else ''}"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except OSError:
        return False


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment names ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            seen = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in seen and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def describe(pids: list[int]) -> str:
    """The command lines of ``pids``, for a failure message."""
    lines = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            lines.append(f"{pid}: {b' '.join(argv).decode(errors='replace')}")
        except OSError:
            lines.append(f"{pid}: (gone)")
    return "; ".join(lines)


def wait_gone(text: str, seconds: float = 30.0) -> None:
    """Wait until no live process mentions ``text``; fail naming those that still do."""
    deadline = time.monotonic() + seconds
    while found := processes_mentioning(text):
        assert time.monotonic() < deadline, f"processes left mentioning {text}: {describe(found)}"
        time.sleep(0.1)


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
