"""The run spec's pydantic models: what a user writes in ``run.yaml``.

Every model rejects unknown fields, so a typo is an error that names the field instead of a setting silently
ignored (``orchestrator.spec.problems`` words it).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from orchestrator.hardware import GPU_TYPES

__all__ = [
    "DISPATCH_POLICIES",
    "DTYPE_BYTES",
    "HYPHENATED_POLICIES",
    "AdvanceRuleSpec",
    "CheckpointSpec",
    "DatasetSpec",
    "DispatchPolicySpec",
    "EntryFilterSpec",
    "IdlePolicySpec",
    "ModelSpec",
    "PoolSpec",
    "RolloutSpec",
    "RunSpec",
    "SchedulingSpec",
    "StageSpec",
    "ToolsSpec",
    "TrainerSpec",
    "canonical_policy_name",
    "closest",
    "is_policy_file",
]

DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The dispatch policies (orchestrator.core.dispatch.POLICIES is this list). Names are kept with
# underscores; "kv-aware" is accepted for "kv_aware" wherever a user types one.
DispatchPolicyName = Literal[
    "static", "round_robin", "least_outstanding", "kv_aware", "power_of_two", "prefix_affinity"
]
DISPATCH_POLICIES: tuple[str, ...] = DispatchPolicyName.__args__  # type: ignore[attr-defined]
HYPHENATED_POLICIES: tuple[str, ...] = tuple(name.replace("_", "-") for name in DISPATCH_POLICIES)
POLICY_FILE_SUFFIXES = (".yaml", ".yml")


def closest(word: str, choices: Iterable[str], cutoff: float = 0.75) -> str | None:
    """The choice nearest to ``word`` (case-insensitive), if one is close: for "did you mean ...?"."""
    by_folded = {choice.lower(): choice for choice in choices}
    match = difflib.get_close_matches(word.lower(), by_folded, n=1, cutoff=cutoff)
    return by_folded[match[0]] if match else None


def _known_gpu_type(value: Any) -> Any:
    if not isinstance(value, str) or value in GPU_TYPES:
        return value
    # "H200" means H200-141GB: a name the user typed the start of, else a near spelling.
    starting = [
        name for name in GPU_TYPES if name.lower().startswith(value.strip().lower()) and value.strip()
    ]
    guess = " or ".join(starting) or closest(value, GPU_TYPES, cutoff=0.6)
    hint = f"did you mean {guess}? " if guess else ""
    raise ValueError(f"unknown GPU type {value!r}; {hint}the catalogue has {', '.join(GPU_TYPES)}")


def canonical_policy_name(name: Any) -> Any:
    """``kv-aware`` → ``kv_aware``; anything else is left for validation to judge."""
    return name.strip().replace("-", "_") if isinstance(name, str) else name


def is_policy_file(value: Any) -> bool:
    return isinstance(value, str) and value.strip().endswith(POLICY_FILE_SUFFIXES)


def _dispatch_name(value: Any) -> Any:
    if is_policy_file(value):
        raise ValueError(
            f"{value!r} is a policy file, which only a spec file read by `orch submit` or `orch validate` "
            "can name (it is read relative to the spec file); name a policy here instead: "
            + ", ".join(DISPATCH_POLICIES)
        )
    return canonical_policy_name(value)


# The JSON schema (and so the CRD) takes both spellings, as the validator does; the value kept is canonical.
_POLICY_NAMES_SCHEMA = WithJsonSchema(
    {"type": "string", "enum": list(dict.fromkeys((*DISPATCH_POLICIES, *HYPHENATED_POLICIES)))}
)


class DispatchPolicySpec(_Strict):
    """A dispatch policy kept as data (``policies/dispatch/*.yaml``), named by ``rollout.dispatch``."""

    policy: Annotated[DispatchPolicyName, _POLICY_NAMES_SCHEMA]
    # See RolloutSpec.chunk_tokens.
    chunk_tokens: int | None = Field(default=512, gt=0)
    description: str = ""

    _canonical = field_validator("policy", mode="before")(canonical_policy_name)


class ModelSpec(_Strict):
    """The policy model: enough of its shape to size weights and KV cache."""

    name: str
    params_b: float = Field(gt=0, description="parameters, in billions")
    layers: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    dtype: Literal["fp32", "bf16", "fp16", "fp8"] = "bf16"

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for every layer: 2 × layers × kv_heads × head_dim × bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        return int(self.params_b * 1e9 * self.dtype_bytes)


class PoolSpec(_Strict):
    """A pool of identical GPU nodes."""

    gpu_type: Annotated[str, WithJsonSchema({"type": "string", "enum": list(GPU_TYPES)})] = "H100-80GB"
    gpus: int = Field(gt=0, description="GPUs in the pool, in whole nodes")
    gpus_per_node: int = Field(default=8, gt=0)

    _gpu_type = field_validator("gpu_type", mode="before")(_known_gpu_type)

    @model_validator(mode="after")
    def _whole_nodes(self) -> PoolSpec:
        if self.gpus % self.gpus_per_node:
            raise ValueError(
                f"gpus: {self.gpus} is not a multiple of gpus_per_node ({self.gpus_per_node}); "
                "pools are made of whole nodes"
            )
        return self

    @property
    def nodes(self) -> int:
        return self.gpus // self.gpus_per_node


class TrainerSpec(_Strict):
    """The training gang: placed all-or-nothing."""

    pool: str
    gpus: int = Field(gt=0)


class RolloutSpec(_Strict):
    """Inference engines that generate rollouts."""

    pool: str
    engines: int = Field(gt=0)
    gpus_per_engine: int = Field(default=1, gt=0)
    samples_per_prompt: int = Field(gt=0)
    prompts_per_step: int = Field(gt=0)
    # A policy name, or in a spec file the path of a policy file (policies/dispatch/*.yaml) that
    # ``load_spec`` reads relative to the spec file and writes in as ``dispatch`` and ``chunk_tokens``.
    dispatch: Annotated[DispatchPolicyName, _POLICY_NAMES_SCHEMA] = "kv_aware"
    # KV-bounded policies (kv_aware, power_of_two, prefix_affinity) ask an engine for at most this many
    # new tokens per request and continue a longer answer in the next request, so a reservation is the
    # context plus this chunk, not plus the whole response budget; null reserves the whole budget
    # (as rStar2-Agent does).
    chunk_tokens: int | None = Field(default=512, gt=0)

    _dispatch = field_validator("dispatch", mode="before")(_dispatch_name)

    @property
    def gpus(self) -> int:
        return self.engines * self.gpus_per_engine

    @property
    def rollouts_per_step(self) -> int:
        return self.samples_per_prompt * self.prompts_per_step


class ToolsSpec(_Strict):
    """The sandboxed code-execution service that runs the model's tool calls (``orchestrator.tools``).

    ``service``: ``embedded`` (a sandbox pool in the process that runs the rollouts), the URL of an
    ``orch tools serve`` (``http://tools:8900``), or ``ray:ADDRESS`` / ``ray:auto`` (sandbox pools as Ray
    actors, one per node). The limits apply to every call; the maxima are the service's.
    """

    max_concurrent_calls: int = Field(default=1024, gt=0)  # a run's rollouts' tool calls in flight at once
    call_timeout_s: float = Field(default=10.0, gt=0, le=120)  # wall clock per call
    cpu_seconds: float = Field(default=5.0, gt=0, le=120)
    memory_mb: int = Field(default=512, gt=0, le=8192)  # address space
    output_bytes: int = Field(default=64 * 1024, gt=0, le=16 * 2**20)  # stdout + stderr kept
    disk_mb: int = Field(default=64, gt=0, le=2048)  # scratch files in all (a tmpfs), and any one file
    service: str = "embedded"

    @field_validator("service")
    @classmethod
    def _known_service(cls, value: str) -> str:
        if value == "embedded" or re.fullmatch(r"(https?://|ray:)\S+", value):
            return value
        raise ValueError("use embedded, http(s)://HOST:PORT of an orch tools serve, or ray:ADDRESS")


class EntryFilterSpec(_Strict):
    """Drop problems that the current policy solves in ``correct`` of ``samples`` fresh tries."""

    samples: int = Field(gt=0)
    drop_if_correct_at_least: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _k_of_k(self) -> EntryFilterSpec:
        threshold = self.threshold
        if threshold > self.samples:
            raise ValueError(
                f"drop_if_correct_at_least: {threshold} exceeds samples ({self.samples}); "
                f"use at most {self.samples}"
            )
        return self

    @property
    def threshold(self) -> int:
        return self.samples if self.drop_if_correct_at_least is None else self.drop_if_correct_at_least


class AdvanceRuleSpec(_Strict):
    """End a stage early once one step's rollouts are solved at ``solve_rate_at_least``."""

    solve_rate_at_least: float = Field(gt=0, le=1)
    min_steps: int = Field(default=1, gt=0, description="steps the stage runs before the rule is checked")


class StageSpec(_Strict):
    """A curriculum stage: ``steps`` steps, fewer if ``advance_when`` or ``orch stage --advance`` ends it."""

    name: str | None = None
    max_response_tokens: int = Field(gt=0)
    max_turns: int = Field(gt=0)
    steps: int = Field(gt=0)
    advance_when: AdvanceRuleSpec | None = None
    entry_filter: EntryFilterSpec | None = None

    @model_validator(mode="after")
    def _rule_within_steps(self) -> StageSpec:
        if self.advance_when is not None and self.advance_when.min_steps > self.steps:
            raise ValueError(
                f"advance_when.min_steps: {self.advance_when.min_steps} exceeds the stage's "
                f"{self.steps} steps; use at most {self.steps}"
            )
        return self


class CheckpointSpec(_Strict):
    every_steps: int = Field(gt=0)
    uri: str = Field(min_length=1)


class IdlePolicySpec(_Strict):
    """GPUs a run holds but leaves below ``threshold_ratio`` utilization for ``after_seconds`` are idle."""

    threshold_ratio: float = Field(default=0.05, ge=0, le=1)
    after_seconds: float = Field(default=300.0, gt=0)
    action: Literal["report", "suspend"] = "report"  # suspend: at the run's next checkpoint


class SchedulingSpec(_Strict):
    queue: str = "default"
    priority: int = 0
    preemptible: bool = False
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="failures in a row at the same step (errors of the run's work, gang failures) "
        "before the run is Failed",
    )


class DatasetSpec(_Strict):
    name: str
    problems: int = Field(gt=0)
    prompt_tokens: int = Field(default=512, gt=0, description="mean prompt length")


class RunSpec(_Strict):
    """A whole training run."""

    name: str = Field(pattern=NAME_PATTERN)
    image: str = Field(min_length=1)
    model: ModelSpec
    dataset: DatasetSpec
    pools: dict[str, PoolSpec] = Field(min_length=1)
    trainer: TrainerSpec
    rollout: RolloutSpec
    tools: ToolsSpec = ToolsSpec()
    curriculum: list[StageSpec] = Field(min_length=1)
    checkpoint: CheckpointSpec
    scheduling: SchedulingSpec = SchedulingSpec()
    idle: IdlePolicySpec = IdlePolicySpec()
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> RunSpec:
        problems = []
        for field, gpu_field, pool_name, gpus in (
            ("trainer", ".gpus", self.trainer.pool, self.trainer.gpus),
            ("rollout", ".engines", self.rollout.pool, self.rollout.gpus),
        ):
            pool = self.pools.get(pool_name)
            if pool is None:
                known = ", ".join(sorted(self.pools))
                problems.append(f"{field}.pool: unknown pool {pool_name!r}; define it under pools ({known})")
            elif gpus > pool.gpus:
                problems.append(
                    f"{field}{gpu_field}: asks for {gpus} GPUs but pool {pool_name!r} has {pool.gpus}; "
                    f"lower {field}{gpu_field} or grow pools.{pool_name}.gpus"
                )
        previous = 0
        for index, stage in enumerate(self.curriculum):
            if stage.max_response_tokens < previous:
                problems.append(
                    f"curriculum[{index}].max_response_tokens: {stage.max_response_tokens} is below the "
                    f"previous stage's {previous}; list stages in order of growing response length"
                )
            previous = max(previous, stage.max_response_tokens)
        if problems:
            raise ValueError("\n".join(problems))  # one line each in the SpecError
        return self

    @property
    def total_steps(self) -> int:
        """Steps the run takes if no stage ends early."""
        return sum(stage.steps for stage in self.curriculum)

    @property
    def colocated(self) -> bool:
        """Trainer and engines share a pool and take turns on its GPUs."""
        return self.trainer.pool == self.rollout.pool
