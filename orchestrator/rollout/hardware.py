"""GPU types the simulated pool knows, from vendor datasheets."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GPU_TYPES", "H100_80GB", "GpuType"]


@dataclass(frozen=True)
class GpuType:
    """The three figures a rollout engine's speed depends on."""

    name: str
    memory_bytes: int
    bf16_dense_flops: float
    hbm_bytes_per_s: float


# NVIDIA H100 Tensor Core GPU datasheet, SXM5 column (nvidia.com/en-us/data-center/h100): 80 GB HBM3 at
# 3.35 TB/s, 1,979 TFLOPS BF16 "with sparsity", i.e. ~989 TFLOPS dense. The "80 GB" is 80 GiB of HBM;
# nvidia-smi reports 81,559 MiB of it as total device memory, which is what an engine can allocate from.
H100_80GB = GpuType(
    name="H100-80GB",
    memory_bytes=81_559 * 2**20,
    bf16_dense_flops=989e12,
    hbm_bytes_per_s=3.35e12,
)

GPU_TYPES: dict[str, GpuType] = {"H100-80GB": H100_80GB}
