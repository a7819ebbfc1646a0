"""The simulated pool's cluster file (``ORCH_SIM_CLUSTER``): the GPU nodes every run shares, per pool,
with their topology. A run names a pool of it; runs no longer bring their own nodes.

    pools:
      node:
        gpu_type: H100-80GB
        nodes: 4
        gpus_per_node: 8
        zones: [zone-a, zone-b]   # nodes are dealt to zones in turn
        racks_per_zone: 2         # and within a zone to racks in turn
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from orchestrator.hardware import GPU_TYPES
from orchestrator.spec.files import _read_yaml
from orchestrator.spec.models import _known_gpu_type
from orchestrator.spec.problems import validate_mapping

__all__ = ["CLUSTER_FILE_ENV", "ClusterFile", "InventoryPool", "load_cluster_file"]

CLUSTER_FILE_ENV = "ORCH_SIM_CLUSTER"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InventoryPool(_Strict):
    gpu_type: Annotated[str, WithJsonSchema({"type": "string", "enum": list(GPU_TYPES)})] = "H100-80GB"
    nodes: int = Field(gt=0, le=100_000)
    gpus_per_node: int = Field(default=8, gt=0)
    zones: list[str] = Field(default_factory=list)
    racks_per_zone: int = Field(default=1, gt=0)

    _gpu_type = field_validator("gpu_type", mode="before")(_known_gpu_type)

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def topology(self, index: int) -> tuple[str, str]:
        """The zone and rack of node ``index``."""
        if not self.zones:
            return "", ""
        zone = self.zones[index % len(self.zones)]
        rack = (index // len(self.zones)) % self.racks_per_zone
        return zone, f"{zone}-rack-{rack}"


class ClusterFile(_Strict):
    pools: dict[str, InventoryPool] = Field(min_length=1)


def load_cluster_file(path: str | Path) -> ClusterFile:
    """Read and check a cluster file; one line per problem, naming the file and the field."""
    return validate_mapping(ClusterFile, _read_yaml(Path(path)), str(path), "with a pools field")
