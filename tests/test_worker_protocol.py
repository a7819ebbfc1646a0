"""The mailbox protocol: plans and results survive JSON, versions are checked, the schemas are current."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.core.work import CheckpointPlan, FilterOutcome, FilterPlan, StepOutcome, StepPlan
from orchestrator.worker import protocol
from orchestrator.worker.protocol import (
    SCHEMA_DIR,
    CheckpointPlanMessage,
    CheckpointResultMessage,
    FilterPlanMessage,
    FilterResultMessage,
    ProtocolError,
    ProtocolVersionError,
    StepPlanMessage,
    StepResultMessage,
    dump_message,
    json_schemas,
    load_plan,
    load_result,
    plan_message,
    schema_text,
    work_key,
)

ids = st.integers(min_value=0, max_value=10_000)
seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)
problems = st.frozensets(ids, max_size=20)
run_ids = st.text(min_size=1, max_size=20)

step_plans = st.builds(
    StepPlan,
    run_id=run_ids,
    step=ids,
    stage_index=ids,
    attempt=ids,
    max_response_tokens=ids,
    max_turns=ids,
    checkpoint_after=st.booleans(),
    checkpoint_uri=st.text(max_size=30),
    dropped_problems=problems,
)
checkpoint_plans = st.builds(CheckpointPlan, run_id=run_ids, step=ids, attempt=ids, checkpoint_uri=st.text())
filter_plans = st.builds(
    FilterPlan,
    run_id=run_ids,
    stage_index=ids,
    attempt=ids,
    step=ids,
    samples=ids,
    threshold=ids,
    dropped_problems=problems,
)
step_outcomes = st.builds(
    StepOutcome,
    rollouts=ids,
    generated_tokens=ids,
    rollout_seconds=seconds,
    train_seconds=seconds,
    checkpoint_seconds=seconds,
    preemptions=ids,
    correct=ids,
    gpu_busy_seconds=seconds,
    gpu_held_seconds=seconds,
    engine_busy_ratio=st.lists(st.floats(0, 1), max_size=4).map(tuple),
    engine_kv_free_ratio=st.lists(st.floats(0, 1), max_size=4).map(tuple),
    queue_peak=ids,
)
filter_outcomes = st.builds(
    FilterOutcome,
    correct=st.dictionaries(ids, ids, max_size=20),
    seconds=seconds,
    gpu_busy_seconds=seconds,
    gpu_held_seconds=seconds,
)


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / name).read_text()))


# ---- round trips ----------------------------------------------------------------------------------


@given(st.one_of(step_plans, checkpoint_plans, filter_plans))
def test_every_plan_survives_the_wire_and_matches_the_committed_schema(
    plan: StepPlan | CheckpointPlan | FilterPlan,
) -> None:
    document = dump_message(plan_message(plan))
    assert load_plan(document).to_plan() == plan
    assert not list(validator("plan.schema.json").iter_errors(json.loads(document)))


@given(step_outcomes)
def test_a_step_result_survives_the_wire(outcome: StepOutcome) -> None:
    document = dump_message(StepResultMessage.from_outcome(outcome))
    assert load_result(document, StepResultMessage).to_outcome() == outcome
    assert not list(validator("result.schema.json").iter_errors(json.loads(document)))


@given(filter_outcomes)
def test_a_filter_result_survives_the_wire_with_integer_problem_ids(outcome: FilterOutcome) -> None:
    document = dump_message(FilterResultMessage.from_outcome(outcome))
    assert all(isinstance(key, str) for key in json.loads(document)["correct"])  # JSON object keys
    assert load_result(document, FilterResultMessage).to_outcome() == outcome
    assert not list(validator("result.schema.json").iter_errors(json.loads(document)))


@given(seconds)
def test_a_checkpoint_result_survives_the_wire(value: float) -> None:
    document = dump_message(CheckpointResultMessage(seconds=value))
    assert load_result(document, CheckpointResultMessage).to_outcome() == value


def test_a_plan_document_is_canonical_so_reposting_an_unchanged_plan_changes_nothing() -> None:
    one = FilterPlan("r", 1, 0, 3, samples=4, threshold=2, dropped_problems=frozenset({9, 1, 5}))
    two = FilterPlan("r", 1, 0, 3, samples=4, threshold=2, dropped_problems=frozenset({5, 9, 1}))
    document = dump_message(plan_message(one))
    assert document == dump_message(plan_message(two))
    body = json.loads(document)
    assert body["dropped_problems"] == [1, 5, 9]
    assert (body["version"], body["kind"]) == (1, "filter")
    assert list(body) == sorted(body)


def test_work_keys_name_each_result() -> None:
    assert work_key(StepPlan("r", 7, 0, 1, 10, 1, False, "")) == "step-7"
    assert work_key(CheckpointPlan("r", 7, 1, "")) == "checkpoint-7"
    assert work_key(FilterPlan("r", 2, 1, 7, 4, 1)) == "filter-2"


@pytest.mark.parametrize(
    ("message", "work"),
    [
        (StepPlanMessage, StepPlan),
        (CheckpointPlanMessage, CheckpointPlan),
        (FilterPlanMessage, FilterPlan),
        (StepResultMessage, StepOutcome),
        (FilterResultMessage, FilterOutcome),
    ],
)
def test_each_message_carries_exactly_the_fields_of_its_core_value(message: Any, work: Any) -> None:
    wire = set(message.model_fields) - {"version", "kind"}
    assert wire == {field.name for field in dataclasses.fields(work)}


# ---- refusals -------------------------------------------------------------------------------------


def _plan_body() -> dict[str, Any]:
    return json.loads(dump_message(plan_message(CheckpointPlan("r", 3, 1, "s3://c"))))


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_a_message_of_another_protocol_version_is_refused_by_name(version: Any) -> None:
    body = {**_plan_body(), "version": version, "field_of_the_future": True}
    with pytest.raises(ProtocolVersionError, match="speaks trainer protocol version 1"):
        load_plan(json.dumps(body))


def test_a_message_without_a_version_is_refused() -> None:
    body = _plan_body()
    del body["version"]
    with pytest.raises(ProtocolVersionError, match="no 'version' field"):
        load_plan(json.dumps(body))


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({**_plan_body(), "kind": "dance"}), "invalid"),
        (json.dumps({**_plan_body(), "step": "three"}), "step"),
        (json.dumps({**_plan_body(), "typo_field": 1}), "typo_field"),
    ],
)
def test_an_invalid_plan_is_refused_with_what_is_wrong(document: str, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        load_plan(document)


def test_a_result_of_the_wrong_kind_is_refused() -> None:
    document = dump_message(CheckpointResultMessage(seconds=1.0))
    with pytest.raises(ProtocolError, match="expected a step result, got a checkpoint result"):
        load_result(document, StepResultMessage)


# ---- schemas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(json_schemas()))
def test_the_committed_schemas_equal_the_generated_ones(name: str) -> None:
    committed = (SCHEMA_DIR / name).read_text()
    assert committed == schema_text(json_schemas()[name]), (
        f"stale: run `python -m orchestrator.worker.protocol` to rewrite {SCHEMA_DIR / name}"
    )


def test_the_schemas_are_valid_and_require_version_and_kind() -> None:
    assert sorted(path.name for path in SCHEMA_DIR.glob("*.json")) == sorted(json_schemas())
    for name, schema in json_schemas().items():
        jsonschema.Draft202012Validator.check_schema(schema)
        for message in schema["$defs"].values():
            assert {"version", "kind"} <= set(message["required"]), name
    body = _plan_body()
    del body["version"]
    assert list(validator("plan.schema.json").iter_errors(body))
    assert list(validator("plan.schema.json").iter_errors({**_plan_body(), "version": 2}))


def test_the_protocol_exports_what_it_lists() -> None:
    assert all(hasattr(protocol, name) for name in protocol.__all__)
