"""The run spec: the examples validate, and every bad input is one line that names its field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.errors import SpecError
from orchestrator.hardware import GPU_TYPES
from orchestrator.spec import DTYPE_BYTES, ModelSpec, RunSpec, load_dispatch_policy, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUICKSTART: dict[str, Any] = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())

Mutation = Callable[[dict[str, Any]], object]


def quickstart_with(*mutations: Mutation) -> dict[str, Any]:
    """The quickstart spec as a dict, with each mutation applied to a fresh copy."""
    data = copy.deepcopy(QUICKSTART)
    for mutate in mutations:
        mutate(data)
    return data


def set_field(path: str, value: Any) -> Mutation:
    """``set_field("trainer.gpus", 0)``; list items as numbers: ``curriculum.1.steps``."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value

    return mutate


def drop_field(path: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return mutate


def spec_error(data: Any) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(data, source="run.yaml")
    return str(caught.value)


def assert_one_line(message: str, *fragments: str) -> None:
    assert "\n" not in message
    assert message.startswith("run.yaml: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---- the examples --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["quickstart.yaml", "rstar2-math.yaml"])
def test_each_example_validates(name: str) -> None:
    spec = load_spec(EXAMPLES / name)
    assert isinstance(spec, RunSpec)
    assert spec.total_steps > 0


def test_rstar2_math_has_the_published_shape() -> None:
    spec = load_spec(EXAMPLES / "rstar2-math.yaml")
    assert spec.pools[spec.trainer.pool].gpus == 64
    assert spec.trainer.gpus == 64
    assert spec.rollout.prompts_per_step == 512
    assert spec.rollout.samples_per_prompt == 32
    assert spec.rollout.rollouts_per_step == 512 * 32
    stages = [(s.max_response_tokens, s.max_turns, s.steps) for s in spec.curriculum]
    assert stages == [(8192, 10, 300), (12288, 10, 85), (12288, 15, 125)]
    entry = spec.curriculum[2].entry_filter
    assert entry is not None
    assert (entry.threshold, entry.samples) == (8, 8)
    assert spec.curriculum[0].entry_filter is None
    assert spec.curriculum[1].entry_filter is None
    assert spec.colocated


def test_the_14b_model_needs_160_kib_of_kv_cache_per_token() -> None:
    spec = load_spec(EXAMPLES / "rstar2-math.yaml")
    assert spec.model.kv_bytes_per_token == 163_840 == 160 * 1024


# ---- bad input: one line naming the field and what to do ----------------------------------------


@pytest.mark.parametrize(
    ("mutation", "fragments"),
    [
        pytest.param(set_field("colour", "blue"), ["colour", "unknown field", "remove it"], id="top-level"),
        pytest.param(
            set_field("trainer.gpu", 8), ["trainer.gpu:", "unknown field", "did you mean gpus?"], id="nested"
        ),
        pytest.param(
            set_field("curriculum.0.max_tokens", 1),
            ["curriculum[0].max_tokens", "unknown field"],
            id="in-list",
        ),
    ],
)
def test_an_unknown_field_is_named_with_its_path(mutation: Mutation, fragments: list[str]) -> None:
    assert_one_line(spec_error(quickstart_with(mutation)), *fragments)


def test_an_unknown_field_with_a_line_break_in_its_name_still_gives_one_line() -> None:
    message = spec_error(quickstart_with(set_field("bad\nkey", 1)))
    assert_one_line(message, "unknown field")


@pytest.mark.parametrize("gpus", [0, -8])
@pytest.mark.parametrize("path", ["trainer.gpus", "pools.node.gpus"])
def test_zero_or_negative_gpus_are_rejected_naming_the_field(path: str, gpus: int) -> None:
    message = spec_error(quickstart_with(set_field(path, gpus)))
    assert_one_line(message, f"{path}:", f"got {gpus}", "greater than 0")


def test_a_pool_of_partial_nodes_is_rejected() -> None:
    message = spec_error(quickstart_with(set_field("pools.node.gpus", 12)))
    assert_one_line(message, "pools.node.gpus:", "multiple of gpus_per_node", "whole nodes")


def test_stages_out_of_order_name_the_stage_that_shrinks() -> None:
    message = spec_error(quickstart_with(set_field("curriculum.1.max_response_tokens", 4096)))
    assert_one_line(message, "curriculum[1].max_response_tokens:", "4096", "8192", "growing response length")


@pytest.mark.parametrize(
    ("mutation", "fragments"),
    [
        pytest.param(
            set_field("trainer.gpus", 16), ["trainer.gpus:", "16 GPUs", "'node' has 8", "lower"], id="trainer"
        ),
        pytest.param(
            set_field("rollout.engines", 16),
            ["rollout.engines:", "16 GPUs", "'node' has 8", "grow pools.node.gpus"],
            id="engines",
        ),
        pytest.param(
            set_field("rollout.gpus_per_engine", 2),
            ["rollout", "16 GPUs", "'node' has 8"],
            id="tensor-parallel",
        ),
    ],
)
def test_a_request_larger_than_its_pool_is_rejected(mutation: Mutation, fragments: list[str]) -> None:
    assert_one_line(spec_error(quickstart_with(mutation)), *fragments)


def test_a_request_that_fills_its_pool_exactly_is_accepted() -> None:
    spec = parse_spec(quickstart_with(set_field("trainer.gpus", 8), set_field("rollout.engines", 8)))
    assert spec.trainer.gpus == spec.pools["node"].gpus == spec.rollout.gpus


@pytest.mark.parametrize("role", ["trainer", "rollout"])
def test_a_role_naming_an_unknown_pool_lists_the_known_pools(role: str) -> None:
    message = spec_error(quickstart_with(set_field(f"{role}.pool", "a100")))
    assert_one_line(message, f"{role}.pool:", "'a100'", "define it under pools", "(node)")


@pytest.mark.parametrize("field", ["model", "trainer", "model.layers", "checkpoint.uri"])
def test_a_missing_required_field_is_named(field: str) -> None:
    message = spec_error(quickstart_with(drop_field(field)))
    assert_one_line(message, f"{field}:", "required field is missing", "add it")


@pytest.mark.parametrize("index", [0, 2])
def test_every_stage_needs_a_step_count(index: int) -> None:
    message = spec_error(quickstart_with(drop_field(f"curriculum.{index}.steps")))
    assert_one_line(message, f"curriculum[{index}].steps:", "required field is missing")


def test_an_advance_rule_cannot_wait_longer_than_its_stage() -> None:
    rule = {"solve_rate_at_least": 0.5, "min_steps": 5}
    message = spec_error(quickstart_with(set_field("curriculum.0.advance_when", rule)))
    assert_one_line(message, "curriculum[0].advance_when.min_steps:", "use at most 4")


@pytest.mark.parametrize("rate", [0, 1.5])
def test_an_advance_rule_needs_a_solve_rate_in_range(rate: float) -> None:
    rule = {"solve_rate_at_least": rate}
    message = spec_error(quickstart_with(set_field("curriculum.0.advance_when", rule)))
    assert_one_line(message, "curriculum[0].advance_when.solve_rate_at_least:")


def test_an_entry_filter_cannot_demand_more_correct_samples_than_it_draws() -> None:
    message = spec_error(quickstart_with(set_field("curriculum.2.entry_filter.drop_if_correct_at_least", 9)))
    assert_one_line(message, "curriculum[2].entry_filter.drop_if_correct_at_least:", "use at most 8")


def test_a_bad_choice_names_the_value_and_the_choices() -> None:
    message = spec_error(quickstart_with(set_field("model.dtype", "int4")))
    assert_one_line(message, "model.dtype:", "'int4'", "'bf16'")


@pytest.mark.parametrize("data", [[1, 2], "just text", 3, None], ids=["list", "string", "number", "empty"])
def test_data_that_is_not_a_mapping_is_rejected(data: Any) -> None:
    assert_one_line(spec_error(data), "expected a mapping of run settings at the top level")


def test_a_file_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("- name: quickstart\n- image: x\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert "expected a mapping" in message
    assert "list" in message


def test_broken_yaml_names_the_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("name: quickstart\ntrainer:\n  pool: node\n  gpus: [8\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: broken YAML at line ")
    assert "column" in message


def test_broken_yaml_reports_where_the_problem_is(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("name: quickstart\nimage: x\n  bad: indent: here\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert "at line 3, column 6" in str(caught.value)


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "absent.yaml")
    message = str(caught.value)
    assert "\n" not in message
    assert "absent.yaml: cannot read the file" in message


def test_the_spec_is_immutable() -> None:
    spec = parse_spec(quickstart_with())
    with pytest.raises(ValueError, match="frozen"):
        spec.trainer.gpus = 16  # type: ignore[misc]


# ---- properties ------------------------------------------------------------------------------------


@given(
    layers=st.integers(1, 200),
    kv_heads=st.integers(1, 128),
    head_dim=st.sampled_from([32, 64, 80, 96, 128, 256]),
    dtype=st.sampled_from(sorted(DTYPE_BYTES)),
)
def test_kv_bytes_per_token_is_k_and_v_for_every_layer(
    layers: int, kv_heads: int, head_dim: int, dtype: str
) -> None:
    model = ModelSpec(
        name="m", params_b=1.0, layers=layers, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype
    )
    assert model.kv_bytes_per_token == 2 * layers * kv_heads * head_dim * DTYPE_BYTES[dtype]


@given(nodes=st.integers(1, 32), trainer_gpus=st.integers(1, 300))
def test_validation_accepts_a_trainer_exactly_when_it_fits_its_pool(nodes: int, trainer_gpus: int) -> None:
    data = quickstart_with(set_field("pools.node.gpus", nodes * 8), set_field("trainer.gpus", trainer_gpus))
    fits = trainer_gpus <= nodes * 8
    try:
        spec = parse_spec(data, source="run.yaml")
    except SpecError as error:
        assert not fits, f"rejected a trainer that fits: {error}"
        assert_one_line(str(error), "trainer", f"{trainer_gpus} GPUs", f"has {nodes * 8}")
    else:
        assert fits, "accepted a trainer larger than its pool"
        assert spec.trainer.gpus == trainer_gpus


# ---- every problem at once, with suggestions (issue 11, point 4) ------------------------------------


def spec_problems(data: Any) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(data, source="run.yaml")
    lines = str(caught.value).splitlines()
    assert list(caught.value.problems) == lines
    assert all(line.startswith("run.yaml: ") for line in lines)
    return lines


def test_three_errors_are_three_lines() -> None:
    lines = spec_problems(
        quickstart_with(
            set_field("trainer.gpus", 0),
            set_field("dataset.problems", -1),
            set_field("model.dtype", "int4"),
        )
    )
    assert len(lines) == 3, lines
    assert any("trainer.gpus: got 0" in line for line in lines)
    assert any("dataset.problems: got -1" in line for line in lines)
    assert any("model.dtype: got 'int4'" in line for line in lines)


def test_a_misspelt_key_names_the_nearest_field_and_not_the_missing_one() -> None:
    data = quickstart_with(
        drop_field("rollout.samples_per_prompt"), set_field("rollout.sample_per_prompt", 8)
    )
    assert spec_problems(data) == [
        "run.yaml: rollout.sample_per_prompt: unknown field; did you mean samples_per_prompt?"
    ]


def test_a_misspelt_key_in_a_list_item_and_in_a_pool_names_the_nearest_field() -> None:
    data = quickstart_with(
        drop_field("curriculum.1.max_turns"),
        set_field("curriculum.1.max_turn", 10),
        set_field("pools.node.gpus_per_nodes", 8),
    )
    assert spec_problems(data) == [
        "run.yaml: pools.node.gpus_per_nodes: unknown field; did you mean gpus_per_node?",
        "run.yaml: curriculum[1].max_turn: unknown field; did you mean max_turns?",
    ]


def test_an_unknown_key_with_nothing_close_still_says_remove_it() -> None:
    [line] = spec_problems(quickstart_with(set_field("colour", "blue")))
    assert line == "run.yaml: colour: unknown field; remove it or check its spelling"


def test_every_cross_field_problem_is_its_own_line() -> None:
    lines = spec_problems(
        quickstart_with(set_field("trainer.gpus", 16), set_field("curriculum.1.max_response_tokens", 4096))
    )
    assert len(lines) == 2, lines
    assert lines[0].startswith("run.yaml: trainer.gpus: asks for 16 GPUs")
    assert lines[1].startswith("run.yaml: curriculum[1].max_response_tokens: 4096 is below")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b"name: caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 9)", id="latin-1"),
        pytest.param(b"\x7fELF\x02\x01\x01\x00\x00\x00", "a binary file", id="binary"),
    ],
)
@pytest.mark.parametrize("loader", ["spec", "policy"])
def test_a_file_that_is_not_utf8_text_is_one_line(
    tmp_path: Path, content: bytes, fragment: str, loader: str
) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError) as caught:
        load_spec(path) if loader == "spec" else load_dispatch_policy(path)
    [line] = str(caught.value).splitlines()
    assert line.startswith(f"{path}: {fragment}")


def test_a_policy_file_shows_every_problem_with_suggestions(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("polcy: kv_aware\nchunk_tokens: 0\n")
    with pytest.raises(SpecError) as caught:
        load_dispatch_policy(path)
    assert sorted(str(caught.value).splitlines()) == [
        f"{path}: chunk_tokens: got 0; it should be greater than 0",
        f"{path}: polcy: unknown field; did you mean policy?",
    ]


def test_a_policy_file_named_by_a_spec_reports_each_problem_under_rollout_dispatch(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text("polcy: kv_aware\nchunk_tokens: 0\n")
    spec_path = tmp_path / "run.yaml"
    spec_path.write_text(yaml.safe_dump(quickstart_with(set_field("rollout.dispatch", "policy.yaml"))))
    with pytest.raises(SpecError) as caught:
        load_spec(spec_path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{spec_path}: rollout.dispatch: ") for line in lines)


# ---- the GPU catalogue (issue 11, point 3) ------------------------------------------------------------


@pytest.mark.parametrize("gpu_type", sorted(GPU_TYPES))
def test_every_catalogue_gpu_type_is_accepted(gpu_type: str) -> None:
    spec = parse_spec(quickstart_with(set_field("pools.node.gpu_type", gpu_type)))
    assert spec.pools["node"].gpu_type == gpu_type


@pytest.mark.parametrize(
    ("typed", "meant"), [("h100", "H100-80GB"), ("H200", "H200-141GB"), ("MI300", "MI300X")]
)
def test_an_unknown_gpu_type_lists_the_catalogue_and_the_nearest_name(typed: str, meant: str) -> None:
    [line] = spec_problems(quickstart_with(set_field("pools.node.gpu_type", typed)))
    assert line.startswith(
        f"run.yaml: pools.node.gpu_type: unknown GPU type {typed!r}; did you mean {meant}?"
    )
    assert all(name in line for name in GPU_TYPES)


def test_a_gpu_type_with_nothing_close_lists_the_catalogue_without_a_guess() -> None:
    [line] = spec_problems(quickstart_with(set_field("pools.node.gpu_type", "TPU-v5")))
    assert "did you mean" not in line
    assert "A100-40GB, A100-80GB, H100-80GB, H200-141GB, B200, L40S, MI300X" in line


def test_the_catalogue_has_the_issue_s_types_with_their_resource_names() -> None:
    assert set(GPU_TYPES) == {"A100-40GB", "A100-80GB", "H100-80GB", "H200-141GB", "B200", "L40S", "MI300X"}
    assert GPU_TYPES["MI300X"].resource_name == "amd.com/gpu"
    assert {GPU_TYPES[n].resource_name for n in set(GPU_TYPES) - {"MI300X"}} == {"nvidia.com/gpu"}
    # Larger parts really are larger: H200 > H100 in memory and bandwidth, MI300X the largest memory.
    assert GPU_TYPES["H200-141GB"].memory_bytes > GPU_TYPES["H100-80GB"].memory_bytes
    assert GPU_TYPES["H200-141GB"].hbm_bytes_per_s > GPU_TYPES["H100-80GB"].hbm_bytes_per_s
    assert max(GPU_TYPES.values(), key=lambda gpu: gpu.memory_bytes).name == "MI300X"
