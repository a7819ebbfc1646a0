"""What a member's pod gets on Kubernetes beyond its command: CPU and memory, ``/dev/shm``, Secrets, storage.

Quantities are Kubernetes quantity strings (``"8"``, ``"500m"``, ``"64Gi"``), validated here as the subset
orch writes (a plain or decimal number and one SI or binary suffix), so a typo is a spec error and not a pod
the apiserver refuses. Another backend may ignore these settings (the Ray backend does today).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

__all__ = [
    "ENGINE_RESOURCES",
    "RESERVED_MOUNT_PATHS",
    "RESERVED_VOLUMES",
    "TRAINER_RESOURCES",
    "KubernetesSpec",
    "ResourceAmounts",
    "ResourcesSpec",
    "VolumeSpec",
    "check_secret_refs",
    "check_shm",
    "quantity_value",
]

_SUFFIXES = {
    "": Fraction(1),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_QUANTITY = re.compile(QUANTITY_PATTERN)
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# Volumes and paths orch mounts itself (the control ConfigMap, the memory-backed /dev/shm).
RESERVED_VOLUMES = ("orch-control", "dshm")
RESERVED_MOUNT_PATHS = ("/etc/orch", "/dev/shm")

Quantity = Annotated[
    str,
    StringConstraints(pattern=QUANTITY_PATTERN, max_length=32),
    Field(description='a Kubernetes quantity, e.g. "8", "500m", "64Gi"'),
]
SecretName = Annotated[str, StringConstraints(pattern=_DNS_SUBDOMAIN, max_length=253)]


def quantity_value(text: str) -> Fraction:
    """The amount a quantity string names (``"64Gi"`` → 68719476736); ``ValueError`` if it is not one."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a quantity; write e.g. 8, 500m or 64Gi")
    suffix = match.group(2) or ""
    return Fraction(text[: len(text) - len(suffix)]) * _SUFFIXES[suffix]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourceAmounts(_Strict):
    """CPU (cores: ``"8"``, ``"500m"``) and memory (bytes: ``"64Gi"``); unset: none asked."""

    cpu: Quantity | None = None
    memory: Quantity | None = None


class ResourcesSpec(_Strict):
    """The container's CPU and memory: ``requests`` are reserved on the node, ``limits`` are enforced.

    GPUs are not set here: they come from ``gpus`` / ``rollout.gpus_per_engine``.
    """

    requests: ResourceAmounts = ResourceAmounts()
    limits: ResourceAmounts = ResourceAmounts()

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> ResourcesSpec:
        for name in ("cpu", "memory"):
            request, limit = getattr(self.requests, name), getattr(self.limits, name)
            if request is not None and limit is not None and quantity_value(limit) < quantity_value(request):
                raise ValueError(
                    f"limits.{name}: {limit} is below requests.{name} ({request}); raise the limit or "
                    "lower the request"
                )
        return self


# Requests only by default: enough for the scheduler to keep a GPU node's CPU and memory for the members,
# and no limit that would kill a large model while it loads; a run sets limits when its cluster wants them.
TRAINER_RESOURCES = ResourcesSpec(requests=ResourceAmounts(cpu="8", memory="64Gi"))
ENGINE_RESOURCES = ResourcesSpec(requests=ResourceAmounts(cpu="4", memory="32Gi"))


def check_secret_refs(value: dict[str, str]) -> dict[str, str]:
    """``{VAR: "secret/key"}``: each a variable name and a Secret's name and key."""
    for name, ref in value.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"{name!r} is not an environment variable name; use letters, digits and _")
        secret, slash, key = ref.partition("/")
        if not slash or not re.fullmatch(_DNS_SUBDOMAIN, secret) or not _SECRET_KEY.match(key):
            raise ValueError(
                f"{name}: {ref!r} is not SECRET/KEY; write the Secret's name, a slash and the key, "
                "e.g. checkpoint-credentials/AWS_SECRET_ACCESS_KEY"
            )
    return value


def check_shm(shm_size: str, resources: ResourcesSpec) -> None:
    """A memory-backed ``/dev/shm`` is charged to the container's memory: it cannot exceed the limit."""
    limit = resources.limits.memory
    if limit is not None and quantity_value(shm_size) > quantity_value(limit):
        raise ValueError(
            f"shm_size: {shm_size} exceeds resources.limits.memory ({limit}), which /dev/shm is "
            "charged to; lower shm_size or raise the limit"
        )


class VolumeSpec(_Strict):
    """A PersistentVolumeClaim mounted into the members' pods (model weights, checkpoints)."""

    name: str = Field(pattern=_DNS_LABEL, description="the volume's name in the pod")
    claim: str = Field(pattern=_DNS_SUBDOMAIN, max_length=253, description="the PersistentVolumeClaim")
    mount_path: str = Field(pattern=r"^/", description="an absolute path in the container")
    read_only: bool = False
    roles: list[Literal["trainer", "engine"]] = Field(
        default_factory=lambda: ["trainer", "engine"], min_length=1, description="whose pods mount it"
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_VOLUMES:
            raise ValueError(f"{value!r} is orch's own volume; pick another name")
        return value

    @field_validator("mount_path")
    @classmethod
    def _not_orchs(cls, value: str) -> str:
        for reserved in RESERVED_MOUNT_PATHS:
            if value.rstrip("/") == reserved or value.startswith(reserved + "/"):
                raise ValueError(f"{value!r} is under {reserved}, which orch mounts; pick another path")
        return value


class KubernetesSpec(_Strict):
    """Pod settings that apply to every member of the run on Kubernetes.

    Every container runs without privilege escalation, with all capabilities dropped and the runtime's
    default seccomp profile. ``run_as_non_root`` makes the kubelet refuse to start an image whose user is
    root (false by default: vLLM's and SGLang's published images run as root); ``run_as_user`` runs the
    containers as that uid (and gid, and ``fsGroup``, so the volumes are writable to it).
    """

    image_pull_secrets: list[SecretName] = Field(
        default_factory=list, description="Secrets of type dockerconfigjson for private registries"
    )
    volumes: list[VolumeSpec] = Field(default_factory=list)
    run_as_non_root: bool = False
    run_as_user: int | None = Field(default=None, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _consistent(self) -> KubernetesSpec:
        for field, values in (
            ("volumes", [volume.name for volume in self.volumes]),
            ("volumes", [volume.mount_path.rstrip("/") for volume in self.volumes]),
            ("image_pull_secrets", list(self.image_pull_secrets)),
        ):
            repeated = sorted({value for value in values if values.count(value) > 1})
            if repeated:
                raise ValueError(f"{field}: {repeated[0]!r} is listed twice; list each once")
        if self.run_as_non_root and self.run_as_user == 0:
            raise ValueError("run_as_user: 0 is root, which run_as_non_root forbids; pick a uid above 0")
        return self
