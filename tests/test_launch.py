"""Engine launch commands, checked against the flags read in the engines' own argument parsers.

``tests/data/engine_flags.json`` lists every flag orch emits or refuses, with the file and line it was read
at, in the released wheels on PyPI:
- vLLM 0.16.0 (vllm-0.16.0-cp38-abi3-manylinux_2_31_x86_64.whl): vllm/engine/arg_utils.py
  (EngineArgs.add_cli_args), vllm/entrypoints/openai/cli_args.py (FrontendArgs, make_arg_parser),
  vllm/entrypoints/cli/serve.py, vllm/entrypoints/serve/instrumentator/health.py (/health), vllm/envs.py
  (VLLM_SERVER_DEV_MODE, which vllm/entrypoints/serve/{rpc,sleep}/api_router.py need);
- SGLang 0.5.5 (sglang-0.5.5-py3-none-any.whl): python/sglang/srt/server_args.py
  (ServerArgs.add_cli_args), python/sglang/launch_server.py, python/sglang/srt/entrypoints/http_server.py
  (/health).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.errors import SpecError
from orchestrator.spec import ENGINE_CLIS, RunSpec, parse_spec
from orchestrator.spec.launch import engine_launch

ROOT = Path(__file__).resolve().parents[1]
FLAGS = json.loads((ROOT / "tests" / "data" / "engine_flags.json").read_text())
QUICKSTART: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())


def spec_with(engine: dict[str, Any] | None = None, *, colocated: bool = False, **dataset: Any) -> RunSpec:
    """The quickstart spec with this engine; trainer and engines in separate pools unless ``colocated``."""
    data = json.loads(json.dumps(QUICKSTART))
    data["rollout"]["gpus_per_engine"] = 2
    data["rollout"]["engines"] = 4
    if not colocated:
        data["pools"]["rollout"] = dict(data["pools"][data["rollout"]["pool"]])
        data["rollout"]["pool"] = "rollout"
    if engine is not None:
        data["rollout"]["engine"] = engine
    data["dataset"].update(dataset)
    return parse_spec(data, "run.yaml")


def refused(engine: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as caught:
        spec_with(engine)
    message = str(caught.value)
    assert "\n" not in message
    return message


def flags_of(argv: tuple[str, ...]) -> list[str]:
    return [word for word in argv if word.startswith("-")]


# ---- the cited flag lists ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vllm", "sglang"])
def test_every_flag_orch_sets_or_refuses_was_read_in_the_engines_parser(kind: str) -> None:
    cli = ENGINE_CLIS[kind]
    verified = set(FLAGS[kind]["flags"])
    assert cli.version == f"{kind} {FLAGS[kind]['version']}"
    for colocated in (False, True):
        launch = engine_launch(spec_with({"kind": kind}, colocated=colocated), 0)
        assert launch.argv[: len(cli.launcher)] == cli.launcher
        assert set(flags_of(launch.argv[len(cli.launcher) :])) <= verified
        assert launch.env == {name: value for name, (value, *_) in FLAGS[kind]["env"].items()}
    assert set(cli.colocated) <= verified
    assert cli.managed_flags <= verified
    assert cli.health_path == FLAGS[kind]["health"][0]


def test_vllm_serve_command_line() -> None:
    launch = engine_launch(spec_with({"model": "/models/qwen", "port": 8100, "args": ["--seed", "3"]}), 1)
    assert launch.argv == (
        "vllm", "serve", "/models/qwen",
        "--host", "127.0.0.1",
        "--port", "8100",
        "--tensor-parallel-size", "2",
        "--max-model-len", str(400 + 12288),
        "--enable-prefix-caching",
        "--seed", "3",
    )  # fmt: skip
    assert (launch.port, launch.health_path, launch.image) == (8100, "/health", QUICKSTART["image"])
    # /collective_rpc (the weight reload) and /sleep are served only in dev mode
    assert launch.env == {"VLLM_SERVER_DEV_MODE": "1"}


@pytest.mark.parametrize(
    ("kind", "flags"),
    [
        ("vllm", ("--enable-sleep-mode",)),
        ("sglang", ("--enable-memory-saver", "--enable-weights-cpu-backup")),
    ],
)
def test_an_engine_sharing_the_trainers_gpus_can_free_its_memory(kind: str, flags: tuple[str, ...]) -> None:
    shared = engine_launch(spec_with({"kind": kind}, colocated=True), 0).argv
    apart = engine_launch(spec_with({"kind": kind}), 0).argv
    assert shared == (*apart, *flags)
    assert not set(flags) & set(apart)


def test_orch_keeps_vllm_dev_mode_on_over_the_spec_env() -> None:
    launch = engine_launch(spec_with({"env": {"VLLM_SERVER_DEV_MODE": "0", "HF_HOME": "/hf"}}), 0)
    assert launch.env == {"VLLM_SERVER_DEV_MODE": "1", "HF_HOME": "/hf"}


def test_sglang_launch_server_command_line() -> None:
    launch = engine_launch(
        spec_with({"kind": "sglang", "image": "lmsysorg/sglang:v0.5.5"}), 0, host="0.0.0.0"
    )
    assert launch.argv == (
        "python3", "-m", "sglang.launch_server",
        "--model-path", "Qwen3-14B-Base",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--tp-size", "2",
        "--context-length", str(400 + 8192),
    )  # fmt: skip
    assert "--disable-radix-cache" not in launch.argv  # SGLang's prefix (radix) cache is on by default
    assert launch.image == "lmsysorg/sglang:v0.5.5"
    assert launch.env == {}


def test_the_max_model_len_is_the_longest_prompt_plus_the_stage_limit() -> None:
    spec = spec_with(max_prompt_tokens=1000)
    assert [spec.max_model_len(i) for i in range(3)] == [1000 + 8192, 1000 + 12288, 1000 + 12288]
    assert spec_with().max_model_len(0) == 400 + 8192  # no max_prompt_tokens: the mean prompt_tokens


def test_a_command_template_is_split_then_filled_in() -> None:
    engine = {
        "kind": "command",
        "model": "/models/my model",
        "command": "python -m fake_engine --port {port} --model {model} --tp {tp} --len={max_model_len}"
        " --host {host}",
        "env": {"FAKE_SEED": "1"},
    }
    launch = engine_launch(spec_with(engine), 2, host="0.0.0.0")
    assert launch.argv == (
        "python", "-m", "fake_engine", "--port", "8000", "--model", "/models/my model", "--tp", "2",
        f"--len={400 + 12288}", "--host", "0.0.0.0",
    )  # fmt: skip
    assert launch.env == {"FAKE_SEED": "1"}


def test_existing_specs_get_a_vllm_engine_and_orch_worker_by_default() -> None:
    spec = spec_with()
    assert spec.rollout.engine.kind == "vllm"
    assert spec.trainer.command == "orch worker"
    assert spec.dataset.uri is None


# ---- refused engines: one line naming the field and the fix ---------------------------------------


@pytest.mark.parametrize(
    ("engine", "fragments"),
    [
        pytest.param(
            {"kind": "command", "command": "serve --port {port} --gpus {gpus}"},
            [
                "rollout.engine.command:",
                "unknown placeholder {gpus}",
                "{port}, {model}, {tp}, {max_model_len}, {host}",
            ],
            id="unknown-placeholder",
        ),
        pytest.param(
            {"kind": "command", "command": "serve {}"},
            ["rollout.engine.command:", "placeholder {}"],
            id="positional",
        ),
        pytest.param(
            {"kind": "command", "command": "serve --port {port"},
            ["rollout.engine.command:", "broken template"],
            id="unclosed-brace",
        ),
        pytest.param(
            {"kind": "command", "command": "serve 'unclosed"},
            ["rollout.engine.command:", "close the quote"],
            id="unclosed-quote",
        ),
        pytest.param({"kind": "command"}, ["rollout.engine.command:", "add command"], id="command-missing"),
        pytest.param(
            {"kind": "vllm", "command": "x"},
            ["rollout.engine.command:", "only kind command"],
            id="command-on-vllm",
        ),
        pytest.param(
            {"args": ["--port=9000"]}, ["rollout.engine.args:", "--port is set by orch"], id="vllm-port"
        ),
        pytest.param(
            {"args": ["-tp", "4"]}, ["rollout.engine.args:", "-tp is set by orch"], id="vllm-tp-alias"
        ),
        pytest.param(
            {"args": ["--no-enable-sleep-mode"]},
            ["rollout.engine.args:", "--no-enable-sleep-mode is set by orch"],
            id="vllm-sleep-mode-off",
        ),
        pytest.param(
            {"kind": "sglang", "args": ["--disable-radix-cache"]},
            ["rollout.engine.args:", "--disable-radix-cache"],
            id="sglang-prefix-cache-off",
        ),
        pytest.param({"kind": "tgi"}, ["rollout.engine.kind:", "'vllm', 'sglang' or 'command'"], id="kind"),
        pytest.param({"port": 70000}, ["rollout.engine.port:", "70000"], id="port"),
        pytest.param({"env": {"BAD-NAME": "1"}}, ["rollout.engine.env:", "BAD-NAME"], id="env-name"),
        pytest.param({"modle": "x"}, ["rollout.engine.modle:", "did you mean model?"], id="typo"),
    ],
)
def test_a_bad_engine_is_one_line_naming_the_field(engine: dict[str, Any], fragments: list[str]) -> None:
    message = refused(engine)
    assert message.startswith("run.yaml: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_a_bad_trainer_command_is_refused() -> None:
    data = json.loads(json.dumps(QUICKSTART))
    data["trainer"]["learner_command"] = "python 'learn.py"
    with pytest.raises(SpecError, match=r"run.yaml: trainer.learner_command: .*close the quote"):
        parse_spec(data, "run.yaml")
