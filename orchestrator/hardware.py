"""The GPU catalogue: the types a pool may name, with the public figures orch sizes and simulates by.

Value types only (no import of the rest of orch), so the run spec can name the catalogue's types.
Every figure is cited beside it. Datasheets quote tensor throughput "with sparsity" next to the dense
figure (or only that one); orch uses the dense figure, half the sparse one. HBM capacities are sold in
binary gigabytes (80 GB of HBM is 80 GiB); where the figure a driver reports is known it is used instead.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "A100_40GB",
    "A100_80GB",
    "B200",
    "GPU_TYPES",
    "GPU_TYPE_ENV",
    "H100_80GB",
    "H200_141GB",
    "L40S",
    "MI300X",
    "GpuType",
    "gpu_resource_names",
]

GiB = 2**30
MiB = 2**20
NVIDIA_RESOURCE = "nvidia.com/gpu"  # NVIDIA k8s-device-plugin
AMD_RESOURCE = "amd.com/gpu"  # ROCm k8s-device-plugin
# Every workload's environment names its pool's GPU type here, so a backend requests the right resource.
GPU_TYPE_ENV = "ORCH_GPU_TYPE"


@dataclass(frozen=True)
class GpuType:
    """One GPU model: what an engine's memory, speed and the simulated telemetry depend on."""

    name: str  # as a run spec names it (pools.*.gpu_type)
    memory_bytes: int
    hbm_bytes_per_s: float
    bf16_dense_flops: float
    resource_name: str  # the Kubernetes extended resource a pod requests it by
    product_name: str  # as NVML (nvidia-smi) or amd-smi names the device
    power_limit_w: float  # max TDP / TBP
    max_sm_clock_hz: float  # max boost clock


# NVIDIA A100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/a100), SXM columns: 40 GB HBM2 at
# 1,555 GB/s, 80 GB HBM2e at 2,039 GB/s; BF16 Tensor Core 312 TFLOPS dense (624 with sparsity); max TDP
# 400 W. Boost clock 1,410 MHz: NVIDIA A100 Tensor Core GPU Architecture whitepaper, table 1.
A100_40GB = GpuType(
    name="A100-40GB",
    memory_bytes=40 * GiB,
    hbm_bytes_per_s=1.555e12,
    bf16_dense_flops=312e12,
    resource_name=NVIDIA_RESOURCE,
    product_name="NVIDIA A100-SXM4-40GB",
    power_limit_w=400.0,
    max_sm_clock_hz=1.41e9,
)
A100_80GB = GpuType(
    name="A100-80GB",
    memory_bytes=80 * GiB,
    hbm_bytes_per_s=2.039e12,
    bf16_dense_flops=312e12,
    resource_name=NVIDIA_RESOURCE,
    product_name="NVIDIA A100-SXM4-80GB",
    power_limit_w=400.0,
    max_sm_clock_hz=1.41e9,
)

# NVIDIA H100 Tensor Core GPU datasheet, SXM5 column (nvidia.com/en-us/data-center/h100): 80 GB HBM3 at
# 3.35 TB/s, 1,979 TFLOPS BF16 with sparsity, i.e. ~989 TFLOPS dense; max TDP 700 W; max boost clock
# 1,980 MHz. nvidia-smi reports 81,559 MiB of the 80 GiB as total device memory, which is what an engine
# can allocate from.
H100_80GB = GpuType(
    name="H100-80GB",
    memory_bytes=81_559 * MiB,
    hbm_bytes_per_s=3.35e12,
    bf16_dense_flops=989e12,
    resource_name=NVIDIA_RESOURCE,
    product_name="NVIDIA H100 80GB HBM3",
    power_limit_w=700.0,
    max_sm_clock_hz=1.98e9,
)

# NVIDIA H200 Tensor Core GPU datasheet, SXM column (nvidia.com/en-us/data-center/h200): 141 GB HBM3e at
# 4.8 TB/s; BF16 1,979 TFLOPS with sparsity (~989 dense); max TDP up to 700 W. Same Hopper die and clocks
# as the H100 SXM5 (1,980 MHz).
H200_141GB = GpuType(
    name="H200-141GB",
    memory_bytes=141 * GiB,
    hbm_bytes_per_s=4.8e12,
    bf16_dense_flops=989e12,
    resource_name=NVIDIA_RESOURCE,
    product_name="NVIDIA H200",
    power_limit_w=700.0,
    max_sm_clock_hz=1.98e9,
)

# NVIDIA DGX B200 datasheet (8 × B200): 1,440 GB of GPU memory (180 GB per GPU) and 64 TB/s of HBM3e
# bandwidth (8 TB/s per GPU). NVIDIA HGX B200 specifications (nvidia.com/en-us/data-center/hgx): FP16/BF16
# Tensor Core 36 PFLOPS with sparsity for 8 GPUs, i.e. 2.25 PFLOPS dense per GPU; up to 1,000 W per GPU.
# The max boost clock is not in either datasheet: 1,965 MHz is an assumption (what nvidia-smi -q reports
# as the max SM clock on B200 systems).
B200 = GpuType(
    name="B200",
    memory_bytes=180 * GiB,
    hbm_bytes_per_s=8e12,
    bf16_dense_flops=2.25e15,
    resource_name=NVIDIA_RESOURCE,
    product_name="NVIDIA B200",
    power_limit_w=1000.0,
    max_sm_clock_hz=1.965e9,
)

# NVIDIA L40S GPU datasheet (nvidia.com/en-us/data-center/l40s): 48 GB GDDR6 with ECC at 864 GB/s;
# BF16 Tensor Core 362.05 TFLOPS dense (733 with sparsity); max power 350 W. Boost clock 2,520 MHz:
# NVIDIA ADA GPU architecture whitepaper, L40S column. (GDDR6, not HBM: the bandwidth figure is the same.)
# nvidia-smi reports 46,068 MiB of total memory (with ECC on), not 48 GiB: the table of reported totals
# in modal-labs/modal-client pull request 2797, which also gives A100 80GB 81,920 and A100 40GB 40,960 MiB.
L40S = GpuType(
    name="L40S",
    memory_bytes=46_068 * MiB,
    hbm_bytes_per_s=864e9,
    bf16_dense_flops=362.05e12,
    resource_name=NVIDIA_RESOURCE,
    product_name="NVIDIA L40S",
    power_limit_w=350.0,
    max_sm_clock_hz=2.52e9,
)

# AMD Instinct MI300X accelerator data sheet (amd.com/en/products/accelerators/instinct/mi300/mi300x):
# 192 GB HBM3 at 5.3 TB/s peak; peak BF16 1,307.4 TFLOPS dense (2,614.9 with sparsity); 750 W total board
# power; peak engine clock 2,100 MHz. rStar2-Agent (arXiv 2508.20722) trained on 64 of these.
MI300X = GpuType(
    name="MI300X",
    memory_bytes=192 * GiB,
    hbm_bytes_per_s=5.3e12,
    bf16_dense_flops=1307.4e12,
    resource_name=AMD_RESOURCE,
    product_name="AMD Instinct MI300X",
    power_limit_w=750.0,
    max_sm_clock_hz=2.1e9,
)

GPU_TYPES: dict[str, GpuType] = {
    gpu.name: gpu for gpu in (A100_40GB, A100_80GB, H100_80GB, H200_141GB, B200, L40S, MI300X)
}


def gpu_resource_names() -> tuple[str, ...]:
    """Every Kubernetes resource name a catalogue type is requested by, each once."""
    return tuple(dict.fromkeys(gpu.resource_name for gpu in GPU_TYPES.values()))
