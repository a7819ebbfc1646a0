"""What orch knows of the inference engines' own command lines, kept as data.

Every flag name here was read in the engine's argument parser of the release named beside it (the wheels
on PyPI); ``tests/test_launch.py`` checks the generated command lines against this table and
``tests/data/engine_flags.json`` (the same flags with the file and line each was read at). The spec uses it
to refuse ``rollout.engine.args`` that would override a flag orch sets; ``orchestrator.spec.launch``
builds the command lines from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["COMMAND_PLACEHOLDERS", "ENGINE_CLIS", "EngineCli", "EngineKind"]

EngineKind = Literal["vllm", "sglang", "command"]

# The names a ``kind: command`` template may use: ``{port}``, ``{model}``, ``{tp}``, ``{max_model_len}``,
# and ``{host}``, the address the backend wants the engine bound to (``0.0.0.0`` in a Kubernetes pod,
# where the engine is reached at its pod's IP; loopback elsewhere).
COMMAND_PLACEHOLDERS: tuple[str, ...] = ("port", "model", "tp", "max_model_len", "host")


@dataclass(frozen=True, kw_only=True)
class EngineCli:
    """One engine's launcher and the flags orch sets on it (each with every alias the parser accepts)."""

    version: str  # the release whose source the flag names were read in
    launcher: tuple[str, ...]  # the program and its subcommand / module
    model: str | None  # the flag that takes the model; None: the model is the first positional argument
    host: str
    port: str
    tensor_parallel: str
    max_model_len: str
    always: tuple[str, ...]  # flags orch always adds (prefix caching)
    # Flags orch adds when the engines share the trainer's GPUs (``RunSpec.colocated``): the engine must be
    # able to free its GPU memory while the learner runs.
    colocated: tuple[str, ...]
    # Environment variables orch sets on every engine (over ``rollout.engine.env``): what the weight reload
    # and sleep endpoints need.
    env: tuple[tuple[str, str], ...]
    # Other spellings of the flags above, and the flag that would turn prefix caching off: refused in
    # rollout.engine.args too.
    refused: tuple[str, ...]
    health_path: str  # GET here answers 200 once the engine serves

    @property
    def managed_flags(self) -> frozenset[str]:
        """Flags orch sets from the spec, which ``rollout.engine.args`` may not set again."""
        names = (self.model, self.host, self.port, self.tensor_parallel, self.max_model_len)
        return frozenset(name for name in (*names, *self.refused) if name is not None)


ENGINE_CLIS: dict[str, EngineCli] = {
    # vLLM 0.16.0 (PyPI wheel vllm-0.16.0-cp38-abi3-manylinux_2_31_x86_64.whl), the first release whose
    # worker takes `reload_weights(weights_path=DIR)` (vllm/v1/worker/gpu_model_runner.py,
    # GPUModelRunner.reload_weights; vllm/v1/worker/gpu_worker.py, Worker.reload_weights(*args, **kwargs));
    # 0.11.0 to 0.15.1 have `reload_weights(self)` only, which re-reads the launch model.
    # - `vllm serve MODEL`: the positional `model_tag` in vllm/entrypoints/openai/cli_args.py
    #   (make_arg_parser); `--model` is the same setting (vllm/engine/arg_utils.py, EngineArgs.add_cli_args).
    # - `--host`, `--port`: FrontendArgs.host / FrontendArgs.port in vllm/entrypoints/openai/cli_args.py,
    #   turned into flags by `f"--{key.replace('_', '-')}"` in FrontendArgs.add_cli_args.
    # - `--tensor-parallel-size` (alias `-tp`), `--max-model-len`, `--enable-prefix-caching`,
    #   `--enable-sleep-mode`: vllm/engine/arg_utils.py, EngineArgs.add_cli_args (ParallelConfig,
    #   ModelConfig, CacheConfig groups); a bool field gets argparse.BooleanOptionalAction there, hence
    #   `--no-enable-prefix-caching` / `--no-enable-sleep-mode`. Without `--enable-sleep-mode` the weights
    #   and KV cache are not allocated in the CuMemAllocator pool (Worker._maybe_get_memory_pool_context),
    #   so `POST /sleep` answers 200 and frees nothing.
    # - `VLLM_SERVER_DEV_MODE=1` (vllm/envs.py, parsed with `bool(int(...))`): without it the `attach_router`
    #   of vllm/entrypoints/serve/rpc/api_router.py (`/collective_rpc`) and
    #   vllm/entrypoints/serve/sleep/api_router.py (`/sleep`, `/wake_up`, `/is_sleeping`) return early, so
    #   those paths answer 404.
    # - readiness: `@router.get("/health")` in vllm/entrypoints/serve/instrumentator/health.py.
    "vllm": EngineCli(
        version="vllm 0.16.0",
        launcher=("vllm", "serve"),
        model=None,
        host="--host",
        port="--port",
        tensor_parallel="--tensor-parallel-size",
        max_model_len="--max-model-len",
        always=("--enable-prefix-caching",),
        colocated=("--enable-sleep-mode",),
        env=(("VLLM_SERVER_DEV_MODE", "1"),),
        refused=("--model", "-tp", "--no-enable-prefix-caching", "--no-enable-sleep-mode"),
        health_path="/health",
    ),
    # SGLang 0.5.5 (PyPI wheel sglang-0.5.5-py3-none-any.whl), python/sglang/srt/server_args.py,
    # ServerArgs.add_cli_args: `--model-path`, `--host`, `--port`, `--tp-size` (alias
    # `--tensor-parallel-size`), `--context-length`. The radix (prefix) cache is on unless
    # `--disable-radix-cache` is given (ServerArgs.disable_radix_cache = False), so no flag turns it on.
    # The launcher is the module python/sglang/launch_server.py; readiness: `@app.get("/health")` in
    # python/sglang/srt/entrypoints/http_server.py. `--enable-memory-saver` (store_true): without it the
    # scheduler's TorchMemorySaverAdapter is a no-op (python/sglang/srt/utils/torch_memory_saver_adapter.py),
    # so `/release_memory_occupation` answers 200 and frees nothing; with it the engine needs the
    # `torch_memory_saver` package. `--enable-weights-cpu-backup` (store_true; the weights region's
    # `enable_cpu_backup` in python/sglang/srt/model_executor/model_runner.py) keeps the released weights in
    # CPU memory, like vLLM's sleep level 1: without it a resumed engine whose reload never comes (the
    # learner failed) would serve undefined weights. `/update_weights_from_disk` and the memory endpoints
    # need no flag.
    "sglang": EngineCli(
        version="sglang 0.5.5",
        launcher=("python3", "-m", "sglang.launch_server"),
        model="--model-path",
        host="--host",
        port="--port",
        tensor_parallel="--tp-size",
        max_model_len="--context-length",
        always=(),
        colocated=("--enable-memory-saver", "--enable-weights-cpu-backup"),
        env=(),
        refused=("--tensor-parallel-size", "--disable-radix-cache"),
        health_path="/health",
    ),
}
