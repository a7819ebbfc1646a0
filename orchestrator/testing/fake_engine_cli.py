"""``python -m orchestrator.testing.fake_engine serve MODEL [flags]``: the fake engine with vLLM's CLI shape.

The flags are vLLM's (``vllm serve MODEL``), with vLLM's names and types, as read in vllm-project/vllm
on main (``vllm/entrypoints/openai/cli_args.py`` at commit 005223338608, ``vllm/engine/arg_utils.py`` at
99d7eb5d6a51; vLLM 0.1x, after the ``vllm/entrypoints/serve/`` router split):

- ``--host``, ``--port``: ``FrontendArgs`` in ``cli_args.py`` (flag = field name with ``-`` for ``_``);
- ``--tensor-parallel-size``/``-tp``, ``--max-model-len``, ``--enable-prefix-caching`` (a
  BooleanOptionalAction: ``--no-enable-prefix-caching`` too), ``--gpu-memory-utilization``,
  ``--served-model-name`` (one or more names): ``EngineArgs.add_cli_args`` in ``arg_utils.py``.

Any other flag is refused with one line on stderr and exit status 2, as vLLM's argparse does. The flags
that only the fake has start with ``--fake-``: ``--fake-answers FILE`` (the dataset JSONL whose answers it
knows, see ``orchestrator.testing.fake_model``), ``--fake-style vllm|sglang`` (its metric names),
``--fake-latency``, ``--fake-seconds-per-token`` and ``--fake-request-log FILE`` (one JSON line per
answer). It binds 127.0.0.1 unless ``--host`` says otherwise;
its weights directory is MODEL (its version from ``MODEL/version``; none: 0). SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from orchestrator.testing.fake_engine import FakeEngine
from orchestrator.testing.fake_model import FakeModel, load_answers

__all__ = ["main", "parser"]


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    """``fake_engine serve``'s argument parser."""
    top = _OneLineParser(prog="fake_engine", description="A fake vLLM-compatible engine for orch's tests.")
    commands = top.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    serve = commands.add_parser("serve", help="serve MODEL like `vllm serve`")
    serve.add_argument("model_tag", help="the model path: its weights directory")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    serve.add_argument("--max-model-len", type=int, default=None)
    serve.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None)
    serve.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    serve.add_argument("--served-model-name", nargs="+", default=None)
    serve.add_argument("--fake-answers", default=None, metavar="FILE")
    serve.add_argument("--fake-style", choices=("vllm", "sglang"), default="vllm")
    serve.add_argument("--fake-latency", type=float, default=0.0)
    serve.add_argument("--fake-seconds-per-token", type=float, default=0.0)
    serve.add_argument("--fake-request-log", default=None, metavar="FILE")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, serve until SIGTERM/SIGINT; the exit status."""
    top = parser()
    args = top.parse_args(argv)
    if args.tensor_parallel_size < 1:
        top.error("--tensor-parallel-size must be >= 1")
    if args.max_model_len is not None and args.max_model_len < 1:
        top.error("--max-model-len must be >= 1")
    if not 0 < args.gpu_memory_utilization <= 1:
        top.error("--gpu-memory-utilization must be in (0, 1]")
    try:
        answers = load_answers(args.fake_answers) if args.fake_answers else {}
    except (OSError, ValueError) as error:
        top.error(f"--fake-answers: {error}")
    engine = FakeEngine(
        args.served_model_name[0] if args.served_model_name else args.model_tag,
        style=args.fake_style,
        latency=args.fake_latency,
        seconds_per_token=args.fake_seconds_per_token,
        model=FakeModel(answers),
        weights_path=args.model_tag,
        max_model_len=args.max_model_len,
        tensor_parallel_size=args.tensor_parallel_size,
        request_log=args.fake_request_log,
    )
    asyncio.run(_serve(engine, args.host or "127.0.0.1", args.port))
    return 0


async def _serve(engine: FakeEngine, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = await engine.start(host, port)
    print(
        f"fake engine {engine.name} (weights version {engine.weights_version}) serving on {url}", flush=True
    )
    try:
        await stop.wait()
    finally:
        await engine.stop()


if __name__ == "__main__":
    sys.exit(main())
