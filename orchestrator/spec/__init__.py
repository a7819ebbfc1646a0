"""The run spec: what a user writes in ``run.yaml``, validated by pydantic.

Every model rejects unknown fields, so a typo is an error that names the field instead
of a setting silently ignored. ``load_spec`` turns every problem into one line of a
``SpecError``, of the form ``<file>: <field path>: <what is wrong>``; a misspelt key names
the field it is nearest to.

``models`` holds the pydantic models, ``problems`` words their validation errors, ``files`` reads spec and
dispatch policy files, ``dataset`` reads a dataset file, ``engines`` holds the engines' CLI facts.
"""

from __future__ import annotations

from orchestrator.spec.dataset import Problem, read_problems
from orchestrator.spec.engines import ENGINE_CLIS, EngineCli
from orchestrator.spec.files import (
    load_dispatch_policy,
    load_queue_files,
    load_spec,
    load_spec_data,
    resolve_dispatch_policy,
)
from orchestrator.spec.models import (
    DISPATCH_POLICIES,
    DTYPE_BYTES,
    HYPHENATED_POLICIES,
    AdvanceRuleSpec,
    CheckpointSpec,
    DatasetSpec,
    DispatchPolicySpec,
    EngineSpec,
    EntryFilterSpec,
    IdlePolicySpec,
    KubernetesSpec,
    ModelSpec,
    PoolSpec,
    RolloutSpec,
    RunSpec,
    SchedulingSpec,
    StageSpec,
    ToolsSpec,
    TrainerSpec,
    canonical_policy_name,
    closest,
)
from orchestrator.spec.pods import ResourcesSpec, VolumeSpec
from orchestrator.spec.problems import parse_spec

__all__ = [
    "DISPATCH_POLICIES",
    "DTYPE_BYTES",
    "ENGINE_CLIS",
    "HYPHENATED_POLICIES",
    "AdvanceRuleSpec",
    "CheckpointSpec",
    "DatasetSpec",
    "DispatchPolicySpec",
    "EngineCli",
    "EngineSpec",
    "EntryFilterSpec",
    "IdlePolicySpec",
    "KubernetesSpec",
    "ModelSpec",
    "PoolSpec",
    "Problem",
    "ResourcesSpec",
    "RolloutSpec",
    "RunSpec",
    "SchedulingSpec",
    "StageSpec",
    "ToolsSpec",
    "TrainerSpec",
    "VolumeSpec",
    "canonical_policy_name",
    "closest",
    "load_dispatch_policy",
    "load_queue_files",
    "load_spec",
    "load_spec_data",
    "parse_spec",
    "read_problems",
    "resolve_dispatch_policy",
]
