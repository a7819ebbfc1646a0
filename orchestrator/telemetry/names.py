"""Every metric orch exports, named by Prometheus conventions (base units, ``_total`` for counters,
``_ratio`` for 0–1 fractions). The exporter, the dashboard and the README all use these names."""

from __future__ import annotations

__all__ = ["GPU_LABELS", "GPU_METRICS", "ROUTER_METRICS", "SCHEDULER_METRICS", "TOOL_METRICS"]

# Labels on every per-GPU series.
GPU_LABELS = ("node", "gpu", "uuid", "pool", "run", "role")

# name -> (type, help). Types are prometheus-client metric kinds.
GPU_METRICS: dict[str, tuple[str, str]] = {
    "orch_gpu_utilization_ratio": ("gauge", "Fraction of the sample period a kernel ran on the GPU"),
    "orch_gpu_memory_utilization_ratio": ("gauge", "Fraction of time device memory was read or written"),
    "orch_gpu_memory_used_bytes": ("gauge", "Device memory in use"),
    "orch_gpu_memory_total_bytes": ("gauge", "Device memory in total"),
    "orch_gpu_power_watts": ("gauge", "Power draw"),
    "orch_gpu_power_limit_watts": ("gauge", "Enforced power limit"),
    "orch_gpu_temperature_celsius": ("gauge", "GPU core temperature"),
    "orch_gpu_sm_clock_hertz": ("gauge", "Streaming-multiprocessor clock"),
    "orch_gpu_clock_throttle_active": ("gauge", "1 while the clocks are held back for the given reason"),
    "orch_gpu_ecc_errors_total": ("counter", "ECC errors since the driver loaded, by type"),
    "orch_gpu_mig_enabled": ("gauge", "1 when MIG mode is on"),
    "orch_gpu_process_memory_used_bytes": ("gauge", "Device memory used by one process"),
    "orch_gpu_telemetry_errors_total": ("counter", "Failed telemetry reads, by field and error"),
    "orch_gpu_idle_seconds_total": ("counter", "Seconds a GPU held by a run stayed below the idle threshold"),
}

SCHEDULER_METRICS: dict[str, tuple[str, str]] = {
    "orch_runs": ("gauge", "Runs by phase"),
    "orch_queue_length": ("gauge", "Runs waiting for admission, by queue"),
    "orch_queue_nominal_gpus": ("gauge", "GPUs of a pool a queue is guaranteed (its nominal quota)"),
    "orch_queue_borrowing_limit_gpus": ("gauge", "Most GPUs of a pool a queue may borrow beyond its quota"),
    "orch_queue_used_gpus": ("gauge", "GPUs of a pool a queue's admitted runs hold"),
    "orch_queue_borrowed_gpus": ("gauge", "GPUs of a pool a queue holds beyond its nominal quota"),
    "orch_queue_pending_runs": ("gauge", "Runs waiting in a queue for GPUs of a pool"),
    "orch_queue_pending_gpus": ("gauge", "GPUs of a pool the runs waiting in a queue ask for"),
    "orch_queue_admitted_runs": ("gauge", "Runs of a queue holding GPUs of a pool"),
    "orch_queue_preemptions_in_flight": (
        "gauge",
        "Runs of a queue asked to stop at their next checkpoint for another run",
    ),
    "orch_run_stage": ("gauge", "Current curriculum stage of a run (1-based)"),
    "orch_run_step": ("gauge", "Steps a run has completed"),
    "orch_run_checkpoint_age_seconds": ("gauge", "Simulated or wall seconds since the run's last checkpoint"),
    "orch_run_gpu_busy_ratio": ("gauge", "Fraction of held GPU time a run kept its GPUs busy"),
    "orch_run_idle_gpu_seconds_total": ("counter", "GPU-seconds a run held GPUs below the idle threshold"),
    "orch_rollouts_in_flight": ("gauge", "Rollouts generating or waiting on a tool call"),
    "orch_tool_calls_in_flight": ("gauge", "Tool calls executing"),
    "orch_dispatch_decision_seconds": ("histogram", "Time to choose an engine for one rollout turn"),
    "orch_engine_kv_cache_free_ratio": ("gauge", "Fraction of an engine's KV cache that is free"),
    "orch_engine_busy_ratio": ("gauge", "Share of the last rollout phase an engine spent generating"),
    "orch_rollout_queue_peak": (
        "gauge",
        "Longest the dispatcher's central queue got in the last rollout phase",
    ),
}

# `orch router`'s own series (it also exports orch_dispatch_decision_seconds and
# orch_engine_kv_cache_free_ratio).
ROUTER_METRICS: dict[str, tuple[str, str]] = {
    "orch_router_requests_total": ("counter", "Requests the router answered, by endpoint and status code"),
    "orch_router_retries_total": ("counter", "Requests resubmitted because their engine failed"),
    "orch_router_queued_requests": ("gauge", "Requests waiting in the router's central queue"),
    "orch_router_engine_healthy": ("gauge", "1 while an engine answers its /metrics and requests"),
    "orch_router_engine_outstanding_requests": ("gauge", "Requests in flight on an engine"),
}

# `orch tools serve`: the sandboxed code-execution service.
TOOL_METRICS: dict[str, tuple[str, str]] = {
    "orch_tools_in_flight": ("gauge", "Accepted calls not yet answered (queued or running)"),
    "orch_tools_queued": ("gauge", "Accepted calls waiting for a sandbox worker"),
    "orch_tools_completed_total": ("counter", "Calls answered, by kind (exec, verify) and verdict"),
    "orch_tools_rejected_total": ("counter", "Calls refused with busy, retry after (admission full)"),
    "orch_tools_latency_seconds": ("histogram", "From acceptance to answer, by kind"),
}
