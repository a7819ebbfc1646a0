"""Dispatch policies as data: policies/dispatch/*.yaml, named from a run spec or by `orch router --policy`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from cli import main
from orchestrator.core.dispatch import POLICIES, EngineState, make_dispatcher
from orchestrator.errors import SpecError
from orchestrator.spec import DispatchPolicySpec, load_dispatch_policy, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
POLICY_FILES = sorted((ROOT / "policies" / "dispatch").glob("*.yaml"))
QUICKSTART: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())


def write_spec(folder: Path, **rollout: Any) -> Path:
    data = copy.deepcopy(QUICKSTART)
    data["rollout"].update(rollout)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_policy(folder: Path, text: str, name: str = "mine.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_the_shipped_policy_files_validate_and_cover_the_baseline_and_the_recommended_policy() -> None:
    loaded = {path.name: load_dispatch_policy(path) for path in POLICY_FILES}
    assert loaded["kv-aware.yaml"] == DispatchPolicySpec(
        policy="kv_aware", chunk_tokens=512, description=loaded["kv-aware.yaml"].description
    )
    assert loaded["kv-aware-whole-budget.yaml"].chunk_tokens is None
    assert loaded["static-split.yaml"].policy == "static"
    assert all(policy.policy in POLICIES and policy.description for policy in loaded.values())


@pytest.mark.parametrize("name", ["kv-aware", "kv_aware", " power-of-two "])
def test_policy_names_may_be_written_with_hyphens(name: str) -> None:
    spec = parse_spec({**QUICKSTART, "rollout": {**QUICKSTART["rollout"], "dispatch": name}})
    assert spec.rollout.dispatch == name.strip().replace("-", "_")
    dispatcher = make_dispatcher(name.strip(), [EngineState(engine=0, kv_total_tokens=100)])
    assert dispatcher.name == name.strip().replace("-", "_")


def test_a_spec_naming_a_policy_file_stores_what_the_file_says(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    write_policy(tmp_path / "policies", "policy: kv-aware\nchunk_tokens: 256\n")
    spec = load_spec(write_spec(tmp_path, dispatch="policies/mine.yaml"))
    assert (spec.rollout.dispatch, spec.rollout.chunk_tokens) == ("kv_aware", 256)
    # The stored form stands on its own: validating it again needs no file.
    assert parse_spec(spec.model_dump(mode="json")) == spec


def test_a_chunk_size_written_in_the_spec_wins_over_the_policy_file(tmp_path: Path) -> None:
    write_policy(tmp_path, "policy: kv_aware\nchunk_tokens: 256\n")
    spec = load_spec(write_spec(tmp_path, dispatch="mine.yaml", chunk_tokens=1024))
    assert spec.rollout.chunk_tokens == 1024
    spec = load_spec(write_spec(tmp_path, dispatch="mine.yaml", chunk_tokens=None))
    assert spec.rollout.chunk_tokens is None


def test_the_rstar2_example_uses_the_shipped_kv_aware_policy() -> None:
    spec = load_spec(ROOT / "examples" / "rstar2-math.yaml")
    assert (spec.rollout.dispatch, spec.rollout.chunk_tokens) == ("kv_aware", 512)


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (None, ["rollout.dispatch", "missing.yaml", "cannot read the file"]),
        ("policy: fastest\n", ["rollout.dispatch", "mine.yaml", "policy: got 'fastest'", "kv_aware"]),
        ("policy: kv_aware\nchunk_tokens: 0\n", ["mine.yaml", "chunk_tokens: got 0", "greater than 0"]),
        ("policy: kv_aware\nweight: 2\n", ["mine.yaml", "weight: unknown field"]),
        ("- kv_aware\n", ["mine.yaml", "expected a mapping with a policy field", "found a list"]),
        ("policy: [kv_aware\n", ["mine.yaml", "broken YAML at line"]),
    ],
)
def test_a_bad_policy_file_is_one_line_naming_the_spec_field_and_the_file(
    tmp_path: Path, content: str | None, fragments: list[str]
) -> None:
    name = "missing.yaml" if content is None else "mine.yaml"
    if content is not None:
        write_policy(tmp_path, content)
    spec_path = write_spec(tmp_path, dispatch=name)
    with pytest.raises(SpecError) as caught:
        load_spec(spec_path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(spec_path))
    for fragment in fragments:
        assert fragment in message


def test_a_policy_file_named_where_no_spec_file_is_read_is_refused_with_the_fix() -> None:
    data = {**QUICKSTART, "rollout": {**QUICKSTART["rollout"], "dispatch": "policies/dispatch/kv-aware.yaml"}}
    with pytest.raises(SpecError) as caught:
        parse_spec(data, source="TrainingRun default/r1")
    message = str(caught.value)
    assert message.startswith("TrainingRun default/r1: rollout.dispatch: ")
    assert "only a spec file read by `orch submit` or `orch validate`" in message and "kv_aware" in message


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("kv-aware", "kv_aware"),
        ("least_outstanding", "least_outstanding"),
        (str(ROOT / "policies/dispatch/static-split.yaml"), "static"),
    ],
)
def test_router_accepts_a_policy_name_or_file(policy: str, expected: str) -> None:
    # Parse the command line as click does before it runs the command (which would start serving).
    router = main.commands["router"]
    context = router.make_context("router", ["--engine", "http://127.0.0.1:9", "--policy", policy])
    assert context.params["policy"] == expected
    assert router.make_context("router", ["--engine", "http://e:1"]).params["policy"] == "kv_aware"


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        ("fastest", "'fastest' is not a dispatch policy; choose one of static, round-robin"),
        ("nowhere.yaml", "nowhere.yaml: cannot read the file"),
    ],
)
def test_router_refuses_an_unknown_policy_naming_the_option(policy: str, fragment: str) -> None:
    result = CliRunner().invoke(main, ["router", "--engine", "http://127.0.0.1:9", "--policy", policy])
    assert result.exit_code == 2
    assert "--policy" in result.output and fragment in result.output
