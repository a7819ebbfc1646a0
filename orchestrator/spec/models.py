"""The run spec's pydantic models: what a user writes in ``run.yaml``.

Every model rejects unknown fields, so a typo is an error that names the field instead of a setting silently
ignored (``orchestrator.spec.problems`` words it).
"""

from __future__ import annotations

import difflib
import re
import shlex
import string
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
from orchestrator.spec.engines import COMMAND_PLACEHOLDERS, ENGINE_CLIS, EngineKind
from orchestrator.spec.pods import (
    ENGINE_RESOURCES,
    TRAINER_RESOURCES,
    KubernetesSpec,
    Quantity,
    ResourcesSpec,
    check_secret_refs,
    check_shm,
)

__all__ = [
    "DISPATCH_POLICIES",
    "DTYPE_BYTES",
    "HYPHENATED_POLICIES",
    "AdvanceRuleSpec",
    "CheckpointSpec",
    "DatasetSpec",
    "DispatchPolicySpec",
    "EngineSpec",
    "EntryFilterSpec",
    "IdlePolicySpec",
    "KubernetesSpec",
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


def _command_line(value: str) -> str:
    """A command line as a shell would split it; a broken quote is refused here, not at launch."""
    try:
        words = shlex.split(value)
    except ValueError as error:
        raise ValueError(f"cannot split {value!r} into words ({error}); close the quote") from error
    if not words:
        raise ValueError("an empty command; give the program to run")
    return value


def _optional_command_line(value: str | None) -> str | None:
    return None if value is None else _command_line(value)


def _env_names(value: dict[str, str]) -> dict[str, str]:
    for name in value:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{name!r} is not an environment variable name; use letters, digits and _")
    return value


_Env = Annotated[dict[str, str], Field(default_factory=dict, description="environment variables to set")]
_SecretEnv = Annotated[
    dict[str, str],
    Field(default_factory=dict, description='environment variables read from Secrets: {VAR: "secret/key"}'),
]
_SHM = Field(default="16Gi", description="size of the memory-backed /dev/shm (Kubernetes)")


def _pod_settings(env: dict[str, str], secrets: dict[str, str], shm: str, resources: ResourcesSpec) -> None:
    """What a role's pod settings must agree on: a variable comes from env or from a Secret, not both."""
    both = sorted(set(env) & set(secrets))
    if both:
        raise ValueError(f"env_from_secrets: {both[0]} is also in env; set it in one of them")
    check_shm(shm, resources)


class TrainerSpec(_Strict):
    """The training gang: placed all-or-nothing, running the user's trainer (``orch worker`` by default)."""

    pool: str
    gpus: int = Field(gt=0)
    command: str = Field(
        default="orch worker", description="the trainer's entry point, split as a shell would"
    )
    image: str | None = Field(default=None, min_length=1, description="default: the run's image")
    env: _Env
    # Run once per step with the batch and a weights directory to write (the RL framework's gradient step).
    learner_command: str | None = None
    # On Kubernetes (orchestrator.spec.pods): each trainer pod's CPU and memory, /dev/shm, and Secrets.
    resources: ResourcesSpec = TRAINER_RESOURCES
    shm_size: Quantity = _SHM
    env_from_secrets: _SecretEnv

    _command = field_validator("command", "learner_command")(_optional_command_line)
    _env = field_validator("env")(_env_names)
    _secrets = field_validator("env_from_secrets")(check_secret_refs)

    @model_validator(mode="after")
    def _pod(self) -> TrainerSpec:
        _pod_settings(self.env, self.env_from_secrets, self.shm_size, self.resources)
        return self


def _template_placeholders(template: str) -> list[str]:
    """The ``{name}`` fields of a format string (``{{``/``}}`` are literal braces)."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise ValueError(f"a broken template ({error}); write a literal brace as {{{{ or }}}}") from error


class EngineSpec(_Strict):
    """How orch launches each engine: vllm or sglang by its own CLI with flags from the spec, or a template.

    For vllm and sglang orch sets the port, the tensor parallel size (``rollout.gpus_per_engine``), the
    max model length (the longest prompt plus the stage's ``max_response_tokens``) and prefix caching
    (``orchestrator.spec.launch``).
    """

    kind: EngineKind = "vllm"
    model: str | None = Field(
        default=None, min_length=1, description="local path or URI of the weights; default: model.name"
    )
    image: str | None = Field(default=None, min_length=1, description="default: the run's image")
    args: list[str] = Field(default_factory=list, description="extra command-line arguments, appended")
    env: _Env
    port: int = Field(default=8000, ge=1, le=65535)
    # kind: command only: a command line with {port}, {model}, {tp}, {max_model_len} and {host} placeholders.
    command: str | None = None
    # On Kubernetes (orchestrator.spec.pods): each engine pod's CPU and memory, /dev/shm, and Secrets.
    resources: ResourcesSpec = ENGINE_RESOURCES
    shm_size: Quantity = _SHM
    env_from_secrets: _SecretEnv
    # On Kubernetes: how long an engine may take to answer its health path before it is failed (loading
    # and compiling a large model takes minutes; an engine that never comes up must not hold GPUs forever).
    startup_timeout_s: int = Field(default=1800, ge=60, le=6 * 3600)

    _env = field_validator("env")(_env_names)
    _secrets = field_validator("env_from_secrets")(check_secret_refs)

    @field_validator("command")
    @classmethod
    def _known_placeholders(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _command_line(value)
        unknown = [name for name in _template_placeholders(value) if name not in COMMAND_PLACEHOLDERS]
        if unknown:
            known = ", ".join(f"{{{name}}}" for name in COMMAND_PLACEHOLDERS)
            raise ValueError(
                f"unknown placeholder {{{unknown[0]}}}; use {known}, or write a literal brace as {{{{ or }}}}"
            )
        return value

    @model_validator(mode="after")
    def _command_matches_kind(self) -> EngineSpec:
        _pod_settings(self.env, self.env_from_secrets, self.shm_size, self.resources)
        if self.kind == "command" and self.command is None:
            raise ValueError(
                "command: kind command needs a command template; add command (or pick vllm/sglang)"
            )
        if self.kind != "command" and self.command is not None:
            raise ValueError(
                f"command: only kind command takes a template; remove it, or put extra {self.kind} "
                "flags in args"
            )
        if self.kind != "command":
            cli = ENGINE_CLIS[self.kind]
            for arg in self.args:
                flag = arg.split("=", 1)[0]
                if flag in cli.managed_flags:
                    raise ValueError(
                        f"args: {flag} is set by orch ({cli.version}) from the spec; remove it "
                        "(port: rollout.engine.port, model: rollout.engine.model, tensor parallel size: "
                        "rollout.gpus_per_engine, max model length: the prompt and the stage's "
                        "max_response_tokens; prefix caching stays on)"
                    )
        return self


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
    # How many weight versions older than the current one a trajectory's turns may come from: 0 trains
    # on-policy only. Older trajectories are regenerated once on re-synced engines, then dropped.
    max_staleness: int = Field(default=0, ge=0)
    engine: EngineSpec = EngineSpec()

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
    # An embedded or Ray sandbox pool refuses to start where it gets no namespaces, unless this is true.
    allow_weak_isolation: bool = False

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
    """The problems. ``uri``: a JSONL file of ``{"id", "prompt", "answer"}`` (a local path or ``file://``
    URI; in a spec file a relative path is read relative to the spec file, and ``problems`` defaults to its
    line count)."""

    name: str
    problems: int = Field(gt=0)
    prompt_tokens: int = Field(default=512, gt=0, description="mean prompt length")
    max_prompt_tokens: int | None = Field(
        default=None, gt=0, description="longest prompt, which engines are sized for; default: prompt_tokens"
    )
    uri: str | None = Field(default=None, min_length=1)

    @field_validator("uri")
    @classmethod
    def _local_file(cls, value: str | None) -> str | None:
        if value is None or value.startswith("file://") or not re.match(r"^[a-zA-Z][\w+.-]*://", value):
            return value
        raise ValueError(f"{value!r}: orch reads only a local path or a file:// URI; copy the file here")

    @model_validator(mode="after")
    def _longest_at_least_mean(self) -> DatasetSpec:
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < self.prompt_tokens:
            raise ValueError(
                f"max_prompt_tokens: {self.max_prompt_tokens} is below the mean prompt_tokens "
                f"({self.prompt_tokens}); raise it to at least {self.prompt_tokens}"
            )
        return self

    @property
    def prompt_budget(self) -> int:
        """Tokens the longest prompt may take."""
        return self.max_prompt_tokens if self.max_prompt_tokens is not None else self.prompt_tokens


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
    kubernetes: KubernetesSpec = KubernetesSpec()
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

    def max_model_len(self, stage_index: int) -> int:
        """An engine's context length in stage ``stage_index``: the longest prompt plus the stage's limit."""
        return self.dataset.prompt_budget + self.curriculum[stage_index].max_response_tokens

    @property
    def colocated(self) -> bool:
        """Trainer and engines share a pool and take turns on its GPUs."""
        return self.trainer.pool == self.rollout.pool
