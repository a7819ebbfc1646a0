"""The train phase's side effects: run the learner, load its weights into the engines, checkpoint them.

- ``run_learner``: ``trainer.learner_command`` (split as a shell would) once, with ``ORCH_BATCH`` (the
  batch JSONL), ``ORCH_WEIGHTS_IN`` (the weights the engines serve now; empty when orch knows none) and
  ``ORCH_WEIGHTS_OUT`` (a new directory for the weights it writes). A non-zero exit is a ``LearnerError``
  carrying the tail of its stderr.
- ``reload_engines``: every engine loads the new weights directory through its own endpoint, by
  ``rollout.engine.kind``: SGLang 0.5.5 ``POST /update_weights_from_disk`` ``{"model_path": DIR}``
  (``UpdateWeightFromDiskReqInput``, ``python/sglang/srt/managers/io_struct.py``); vLLM 0.16.0 (and
  ``kind: command``, which orch cannot tell apart) ``POST /collective_rpc``
  ``{"method": "reload_weights", "kwargs": {"weights_path": DIR}}``
  (``vllm/entrypoints/serve/rpc/api_router.py``, served only with ``VLLM_SERVER_DEV_MODE=1``;
  ``GPUModelRunner.reload_weights(weights_path=...)``, ``vllm/v1/worker/gpu_model_runner.py``, new in 0.16.0).
  The fake engine imitates both.
- ``sleep_engines`` / ``wake_engines``: engines that share the trainer's GPUs free their memory for the
  learner and take it back: vLLM ``POST /sleep?level=1`` and ``POST /wake_up``
  (``vllm/entrypoints/serve/sleep/api_router.py``, dev mode only; the memory is freed only when the engine
  was started with ``--enable-sleep-mode``); SGLang ``POST /release_memory_occupation`` and
  ``POST /resume_memory_occupation`` with ``{}`` (no ``tags``: weights, KV cache and CUDA graphs;
  ``python/sglang/srt/entrypoints/http_server.py``; freed only with ``--enable-memory-saver``, and refused
  while requests are running). ``orchestrator.spec.launch`` adds those flags and the variable.
  ``colocated_urls`` picks those engines' URLs out of ``ORCH_ENGINE_URLS`` by the member names in
  ``ORCH_COLOCATED_ENGINES``.
- ``save_checkpoint``: the weights directory is copied into ``<checkpoint>/weights``, where a resumed
  attempt finds it (``checkpoint_weights``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from orchestrator.errors import OrchError

__all__ = [
    "BATCH_ENV",
    "COLOCATED_ENV",
    "WEIGHTS_IN_ENV",
    "WEIGHTS_OUT_ENV",
    "LearnerError",
    "WeightSyncError",
    "checkpoint_weights",
    "colocated_urls",
    "local_path",
    "reload_engines",
    "reload_request",
    "run_learner",
    "save_checkpoint",
    "sleep_engines",
    "sleep_request",
    "wake_engines",
    "wake_request",
]

BATCH_ENV = "ORCH_BATCH"
WEIGHTS_IN_ENV = "ORCH_WEIGHTS_IN"
WEIGHTS_OUT_ENV = "ORCH_WEIGHTS_OUT"
UNREACHABLE_S = 180.0  # how long an engine restarting under its supervisor is waited for
STDERR_TAIL = 2000  # characters of a failed learner's stderr kept in the error
CHECKPOINT_WEIGHTS = "weights"
COLOCATED_ENV = "ORCH_COLOCATED_ENGINES"  # on a trainer member: the engine members sharing its GPUs
_ENGINE_MEMBER = re.compile(r"-engine-(\d+)-a\d+$")  # orchestrator.core.members.member_key


class LearnerError(OrchError):
    """The learner command failed (its exit status and stderr tail are in the message)."""


class WeightSyncError(OrchError):
    """An engine did not do what the train phase asked: load new weights, sleep or wake."""


def local_path(uri: str) -> Path:
    """The local directory a path or ``file://`` URI names; other schemes are refused."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # a one-letter scheme is a Windows drive
        raise OrchError(f"{uri}: the reference trainer reads and writes local paths or file:// URIs only")
    return Path(uri)


def run_learner(
    command: str,
    batch: Path,
    weights_in: Path | None,
    weights_out: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Run the learner once (see the module docstring); ``LearnerError`` if it fails."""
    weights_out.mkdir(parents=True, exist_ok=True)
    environ = {
        **(os.environ if env is None else env),
        BATCH_ENV: str(batch),
        WEIGHTS_IN_ENV: "" if weights_in is None else str(weights_in),
        WEIGHTS_OUT_ENV: str(weights_out),
    }
    try:
        done = subprocess.run(
            shlex.split(command), env=environ, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError as error:
        raise LearnerError(f"learner command {command!r} could not start: {error}") from error
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-STDERR_TAIL:].strip()
        raise LearnerError(
            f"learner command {command!r} exited with status {done.returncode}"
            + (f"; its stderr ends:\n{tail}" if tail else " (no stderr)")
        )


def reload_request(kind: str, weights: Path) -> tuple[str, dict[str, object]]:
    """The path and JSON body that make an engine of ``kind`` load ``weights``."""
    if kind == "sglang":
        return "/update_weights_from_disk", {"model_path": str(weights)}
    return "/collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(weights)}}


def reload_engines(urls: Sequence[str], kind: str, weights: Path, *, timeout_s: float = 600) -> None:
    """Every engine loads ``weights``; ``WeightSyncError`` naming the first that did not."""
    _post_all(urls, *reload_request(kind, weights), timeout_s=timeout_s)


def sleep_request(kind: str) -> tuple[str, dict[str, object]]:
    """The path and JSON body that make an engine of ``kind`` free its GPU memory."""
    if kind == "sglang":
        return "/release_memory_occupation", {}
    return "/sleep?level=1", {}  # level 1: weights to CPU memory, KV cache discarded


def wake_request(kind: str) -> tuple[str, dict[str, object]]:
    """The path and JSON body that make an engine of ``kind`` take its GPU memory back."""
    if kind == "sglang":
        return "/resume_memory_occupation", {}
    return "/wake_up", {}


def sleep_engines(urls: Sequence[str], kind: str, *, timeout_s: float = 600) -> None:
    """Every engine in ``urls`` frees its GPU memory; ``WeightSyncError`` naming the first that did not."""
    _post_all(urls, *sleep_request(kind), timeout_s=timeout_s)


def wake_engines(urls: Sequence[str], kind: str, *, timeout_s: float = 600) -> None:
    """Every engine in ``urls`` takes its GPU memory back; ``WeightSyncError`` naming the first that
    did not."""
    _post_all(urls, *wake_request(kind), timeout_s=timeout_s)


def colocated_urls(names: str, urls: Sequence[str]) -> list[str]:
    """The URLs of the engine members named in ``names`` (``ORCH_COLOCATED_ENGINES``: comma-separated
    ``<run>-engine-<i>-a<attempt>``), engine ``i`` being ``urls[i]`` (``ORCH_ENGINE_URLS``' order)."""
    found = []
    for name in filter(None, (part.strip() for part in names.split(","))):
        match = _ENGINE_MEMBER.search(name)
        if match is None:
            raise OrchError(f"{COLOCATED_ENV}: {name!r} is not an engine member name (<run>-engine-<i>-a<n>)")
        index = int(match.group(1))
        if index >= len(urls):
            raise OrchError(
                f"{COLOCATED_ENV}: {name!r} is engine {index}, but ORCH_ENGINE_URLS lists "
                f"{len(urls)} engine(s)"
            )
        found.append(urls[index])
    return found


def _post_all(
    urls: Sequence[str],
    path: str,
    body: Mapping[str, object],
    *,
    timeout_s: float,
    unreachable_s: float = UNREACHABLE_S,
) -> None:
    """POST ``body`` to ``path`` of every engine. One that refuses connections is being restarted by its
    supervisor: it is asked again every second, ``unreachable_s`` at most, since it would otherwise
    serve its launch weights (or stay awake through the train phase)."""
    data = json.dumps(body).encode()
    for url in urls:
        request = urllib.request.Request(
            url.rstrip("/") + path, data=data, headers={"Content-Type": "application/json"}, method="POST"
        )
        deadline = time.monotonic() + unreachable_s
        while True:
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as response:
                    answer = json.loads(response.read() or b"{}")
                break
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:500]
                raise WeightSyncError(f"{url}{path}: HTTP {error.code}: {detail}") from error
            except urllib.error.URLError as error:
                if not isinstance(error.reason, ConnectionError) or time.monotonic() > deadline:
                    raise WeightSyncError(f"{url}{path}: {error}") from error
                time.sleep(1.0)
            except (OSError, ValueError) as error:
                raise WeightSyncError(f"{url}{path}: {error}") from error
        if isinstance(answer, dict) and answer.get("success") is False:  # SGLang answers 200 or 400
            raise WeightSyncError(f"{url}{path}: {answer.get('message', 'not loaded')}")


def save_checkpoint(weights: Path | None, checkpoint_uri: str) -> Path | None:
    """Copy ``weights`` into ``<checkpoint>/weights`` (replacing an earlier copy); where, or None."""
    if weights is None:
        return None
    target = local_path(checkpoint_uri) / CHECKPOINT_WEIGHTS
    staging = target.with_name(f".{CHECKPOINT_WEIGHTS}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(weights, staging)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)  # a killed copy leaves the old checkpoint, never half of one
    return target


def checkpoint_weights(checkpoint_uri: str) -> Path | None:
    """The weights saved in a checkpoint, if it holds any."""
    if not checkpoint_uri:
        return None
    path = local_path(checkpoint_uri) / CHECKPOINT_WEIGHTS
    return path if path.is_dir() else None
