"""``./`` paths in a spec file are read relative to the spec file (``orchestrator.spec.local_paths``)."""

from __future__ import annotations

import shlex
from pathlib import Path

from orchestrator.spec import load_spec, load_spec_data
from orchestrator.spec.local_paths import resolve_local_paths

ROOT = Path(__file__).resolve().parents[1]


def test_dot_paths_in_the_model_and_commands_become_absolute_and_others_stay(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "learn.py").write_text("")
    data = {
        "rollout": {
            "engine": {"model": "./weights", "command": "serve {model} --port {port} --x ./learn.py"}
        },
        "trainer": {"command": "orch worker", "learner_command": "python ./learn.py ./missing.py"},
        "name": "kept",
    }
    out = resolve_local_paths(data, tmp_path)
    assert out["rollout"]["engine"]["model"] == str(tmp_path / "weights")
    assert shlex.split(out["rollout"]["engine"]["command"]) == [
        "serve", "{model}", "--port", "{port}", "--x", str(tmp_path / "learn.py"),
    ]  # fmt: skip
    assert out["trainer"]["command"] == "orch worker"  # nothing local: the text as written
    assert shlex.split(out["trainer"]["learner_command"]) == [
        "python",
        str(tmp_path / "learn.py"),
        "./missing.py",
    ]
    assert data["rollout"]["engine"]["model"] == "./weights"  # the input is not changed


def test_a_model_name_that_is_not_a_dot_path_is_left_alone(tmp_path: Path) -> None:
    data = {"rollout": {"engine": {"model": "Qwen/Qwen3-8B"}}}
    assert resolve_local_paths(data, tmp_path) == data


def test_the_ray_quickstart_names_its_files_by_absolute_path() -> None:
    spec = load_spec(ROOT / "examples" / "ray-quickstart.yaml")
    examples = ROOT / "examples"
    assert spec.rollout.engine.model == str(examples / "weights" / "initial")
    assert (Path(spec.rollout.engine.model) / "version").read_text().strip() == "1"
    assert spec.trainer.learner_command == f"python {examples / 'learner_example.py'}"
    assert str(examples / "datasets" / "arith-mini.jsonl") in spec.rollout.engine.command
    assert load_spec_data(ROOT / "examples" / "ray-quickstart.yaml")["trainer"]["command"] == "orch worker"
