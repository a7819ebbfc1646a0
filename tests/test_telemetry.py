"""GPU telemetry from NVML (real pynvml without a driver; a fake NVML with GPUs), dcgm-exporter and the
simulator, through the collector and the agent's HTTP /metrics, checked with prometheus-client's parser
and promtool."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cli import main
from orchestrator.errors import OrchError
from orchestrator.sim.gpu_source import SimulatedGpuSource
from orchestrator.telemetry.dcgm import DcgmSource, DcgmUnavailable, parse_dcgm
from orchestrator.telemetry.exporter import THROTTLE_REASONS, Agent, GpuCollector, parse_interval
from orchestrator.telemetry.names import GPU_LABELS, GPU_METRICS
from orchestrator.telemetry.nvml import THROTTLE_BITS, NvmlSource, NvmlUnavailable
from orchestrator.telemetry.sample import GpuSample
from orchestrator.testing.fake_nvml import PUBLISHED_CALL_COSTS, FakeNvml, spend_cpu

GIB = 2**30
EXTRA_LABELS = {
    "orch_gpu_clock_throttle_active": ("reason",),
    "orch_gpu_ecc_errors_total": ("type",),
    "orch_gpu_process_memory_used_bytes": ("pid",),
    "orch_gpu_telemetry_errors_total": ("field", "error"),
}


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


class Clock:
    """A clock a test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scrape(collector: GpuCollector) -> dict[str, Any]:
    """Collect once through a registry and parse the exposition back: family name -> family."""
    registry = CollectorRegistry()
    registry.register(collector)
    return families(generate_latest(registry).decode())


def families(text: str) -> dict[str, Any]:
    # The parser names a counter family without its _total; key every family by the name orch exports.
    parsed = {}
    for family in text_string_to_metric_families(text):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        parsed[name] = family
    return parsed


def value(family: Any, **labels: str) -> float:
    found = [s.value for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (family.name, labels, family.samples)
    return found[0]


# ---- NVML without a driver: the real pynvml ----------------------------------------------------------


def _real_nvml_or_skip() -> None:
    try:
        NvmlSource("probe").close()
    except NvmlUnavailable:
        return
    pytest.skip("this machine has an NVIDIA driver: the no-driver path cannot be exercised")


def test_without_a_driver_the_real_nvml_source_raises_one_clear_line() -> None:
    _real_nvml_or_skip()
    with pytest.raises(NvmlUnavailable) as caught:
        NvmlSource("node-a")
    message = str(caught.value)
    assert isinstance(caught.value, OrchError)
    assert "\n" not in message
    assert message.startswith("no NVIDIA driver on this node (")
    assert message.endswith("); use --simulate for a simulated GPU source")


def test_orch_agent_without_a_driver_prints_one_line_and_fails() -> None:
    _real_nvml_or_skip()
    result = CliRunner().invoke(main, ["agent", "--port", "0"])
    assert result.exit_code == NvmlUnavailable.exit_code != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no NVIDIA driver on this node (")
    assert lines[0].endswith("; use --simulate for a simulated GPU source")


# ---- NVML with GPUs: the fake ------------------------------------------------------------------------


def test_every_field_is_read_and_converted_to_base_units() -> None:
    nvml = FakeNvml(gpus=2)
    nvml.gpus[1].mig_mode = 1
    source = NvmlSource("node-a", nvml=nvml, clock=Clock(5.0))
    first, second = source.samples()
    assert (first.node, first.index, first.uuid, first.name) == (
        "node-a",
        0,
        nvml.gpus[0].uuid,
        nvml.gpus[0].name,
    )
    assert first.utilization_ratio == pytest.approx(0.87)
    assert first.memory_utilization_ratio == pytest.approx(0.41)
    assert first.memory_used_bytes == 61 * GIB
    assert first.memory_total_bytes == 81_559 * 2**20
    assert first.power_watts == pytest.approx(612.0)
    assert first.power_limit_watts == pytest.approx(700.0)
    assert first.temperature_celsius == 64.0
    assert first.sm_clock_hertz == pytest.approx(1.98e9)
    assert first.throttle_reasons == ("sw_power_cap",)
    assert first.ecc_errors == {
        "volatile_uncorrected": 0,
        "volatile_corrected": 2,
        "aggregate_uncorrected": 1,
        "aggregate_corrected": 7,
    }
    assert (first.mig_enabled, second.mig_enabled) == (False, True)
    assert [(p.pid, p.used_bytes) for p in first.processes] == [(4242, 60 * GIB)]
    assert first.errors == {}
    assert first.at == 5.0
    source.close()
    assert nvml.init_calls == 1 and nvml.initialised == 0


def test_the_fake_charges_each_call_its_own_cost_and_nothing_by_default() -> None:
    charged: list[float] = []
    costs = {"nvmlDeviceGetMemoryInfo": 0.25, "nvmlDeviceGetComputeRunningProcesses": 7.0}
    nvml = FakeNvml(gpus=2, call_costs=costs, default_cost=0.5, spend=charged.append)
    source = NvmlSource("node-a", nvml=nvml)
    assert charged == [0.5, 0.5]  # nvmlInit, nvmlDeviceGetCount
    charged.clear()
    source.samples()
    # per GPU: handle, UUID, name (first sample only), then 10 readers; ECC is 4 calls
    per_gpu = [0.5] * 3 + [0.5, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5] + [0.5] * 4 + [0.5, 7.0]
    assert charged == per_gpu * 2
    source.close()

    free: list[float] = []
    plain = FakeNvml(gpus=2, spend=free.append)
    NvmlSource("node-a", nvml=plain).samples()
    assert free == []


def test_the_fake_spends_the_cost_as_cpu_time_of_the_calling_thread() -> None:
    # A lower bound on CPU time, which the busy-wait guarantees however the machine is loaded.
    start = time.thread_time()
    spend_cpu(0.02)
    assert time.thread_time() - start >= 0.02
    assert PUBLISHED_CALL_COSTS["nvmlDeviceGetComputeRunningProcesses"] == pytest.approx(4.5e-3)


def test_nvml_is_initialised_once_not_per_sample() -> None:
    nvml = FakeNvml(gpus=8)
    source = NvmlSource("node-a", nvml=nvml)
    for _ in range(5):
        assert len(source.samples()) == 8
    assert nvml.init_calls == 1
    source.close()
    source.close()  # idempotent
    assert nvml.initialised == 0


def test_throttle_bitmask_becomes_reason_names_through_either_nvml_name() -> None:
    class OldBindings(FakeNvml):
        nvmlDeviceGetCurrentClocksEventReasons = None  # older nvidia-ml-py: only the "throttle" spelling

        def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
            return 0x001 | 0x040

    source = NvmlSource("node-a", nvml=OldBindings(gpus=1))
    assert source.samples()[0].throttle_reasons == ("gpu_idle", "hw_thermal_slowdown")
    source.close()
    assert set(THROTTLE_BITS.values()) <= set(THROTTLE_REASONS)


def test_a_field_that_is_not_supported_is_none_with_its_reason_and_counted() -> None:
    nvml = FakeNvml(gpus=2)
    nvml.fail(1, "nvmlDeviceGetPowerUsage", nvml.NVMLError_NotSupported)
    nvml.fail(1, "nvmlDeviceGetTotalEccErrors", nvml.NVMLError_NotSupported)
    clock = Clock()
    source = NvmlSource("node-a", nvml=nvml, clock=clock)
    collector = GpuCollector(source.samples)

    sample = source.samples()[1]
    assert sample.power_watts is None and sample.ecc_errors == {}
    assert sample.errors == {"power_watts": "not_supported", "ecc_errors": "not_supported"}
    assert sample.power_limit_watts == pytest.approx(700.0)  # the other fields are still read

    parsed = scrape(collector)
    errors = parsed["orch_gpu_telemetry_errors_total"]
    assert value(errors, gpu="1", field="power_watts", error="not_supported") == 1
    assert [s.labels["gpu"] for s in parsed["orch_gpu_power_watts"].samples] == ["0"]
    assert {s.labels["gpu"] for s in parsed["orch_gpu_ecc_errors_total"].samples} == {"0"}

    clock.now += 1
    again = scrape(collector)  # a new sample: the counter goes up; the same sample is not counted twice
    assert value(again["orch_gpu_telemetry_errors_total"], gpu="1", field="power_watts") == 2
    collector.observe(source.samples())
    collector.observe(source.samples())  # same clock reading: already counted
    assert value(scrape(collector)["orch_gpu_telemetry_errors_total"], gpu="1", field="ecc_errors") == 2
    source.close()


def test_a_lost_gpu_reports_errors_while_the_others_keep_reporting() -> None:
    nvml = FakeNvml(gpus=4)
    nvml.lose(3)  # lost before the agent started: no handle
    source = NvmlSource("node-a", nvml=nvml)
    assert source.samples()[1].errors == {}
    nvml.lose(1)  # falls off the bus mid-run
    samples = source.samples()
    assert [s.utilization_ratio for s in samples] == [pytest.approx(0.87), None, pytest.approx(0.87), None]
    lost = samples[1]
    assert lost.uuid == nvml.gpus[1].uuid  # read while it was there
    assert set(lost.errors.values()) == {"gpu_is_lost"}
    assert {"utilization_ratio", "power_watts", "processes", "mig_enabled"} <= set(lost.errors)
    assert lost.memory_used_bytes is None and lost.processes == ()
    assert samples[3].errors == {"device": "gpu_is_lost"}

    parsed = scrape(GpuCollector(lambda: samples))
    assert {s.labels["gpu"] for s in parsed["orch_gpu_utilization_ratio"].samples} == {"0", "2"}
    assert {s.labels["gpu"] for s in parsed["orch_gpu_clock_throttle_active"].samples} == {"0", "2"}
    assert value(parsed["orch_gpu_telemetry_errors_total"], gpu="3", field="device") == 1

    nvml.heal(3)
    assert source.samples()[3].errors == {}  # the handle is looked up again on the next sample
    source.close()


# ---- dcgm-exporter -----------------------------------------------------------------------------------

H100 = "NVIDIA H100 80GB HBM3"
HELP = {
    "DCGM_FI_DEV_SM_CLOCK": "SM clock frequency (in MHz).",
    "DCGM_FI_DEV_GPU_TEMP": "GPU temperature (in C).",
    "DCGM_FI_DEV_POWER_USAGE": "Power draw (in W).",
    "DCGM_FI_DEV_GPU_UTIL": "GPU utilization (in %).",
    "DCGM_FI_DEV_FB_FREE": "Framebuffer memory free (in MiB).",
    "DCGM_FI_DEV_FB_USED": "Framebuffer memory used (in MiB).",
    "DCGM_FI_DEV_XID_ERRORS": "Value of the last XID error encountered.",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "Ratio of time the graphics engine is active.",
}


def dcgm_text(rows: dict[str, list[tuple[dict[str, str], str]]]) -> str:
    """dcgm-exporter's exposition: per field HELP, TYPE and one line per (labels, value), labels in its
    template's order (gpu, UUID, pci_bus_id, device, modelName[, GPU_I_PROFILE, GPU_I_ID], Hostname)."""
    lines = []
    for field, series in rows.items():
        lines += [f"# HELP {field} {HELP[field]}", f"# TYPE {field} gauge"]
        for labels, reading in series:
            text = ",".join(f'{key}="{label}"' for key, label in labels.items())
            lines.append(f"{field}{{{text}}} {reading}")
    return "\n".join(lines) + "\n"


def dcgm_gpu(index: int, uuid: str, **extra: str) -> dict[str, str]:
    bus = f"00000000:{0x18 + 0x12 * index:02X}:00.0"
    return {
        "gpu": str(index),
        "UUID": uuid,
        "pci_bus_id": bus,
        "device": f"nvidia{index}",
        "modelName": H100,
    } | extra


A, B = dcgm_gpu(0, "GPU-aaaa", Hostname="n1"), dcgm_gpu(1, "GPU-bbbb", Hostname="n1")
DCGM_TEXT = dcgm_text(
    {
        "DCGM_FI_DEV_SM_CLOCK": [(A, "1980"), (B, "1755")],
        "DCGM_FI_DEV_GPU_TEMP": [(A, "61"), (B, "9223372036854775794")],  # DCGM's "blank": no reading
        "DCGM_FI_DEV_POWER_USAGE": [(A, "512.25"), (B, "88.5")],
        "DCGM_FI_DEV_GPU_UTIL": [(A, "93"), (B, "0")],
        "DCGM_FI_DEV_FB_FREE": [(A, "20559"), (B, "81000")],
        "DCGM_FI_DEV_FB_USED": [(A, "61000"), (B, "559")],
        "DCGM_FI_DEV_XID_ERRORS": [(A, "0")],
    }
)

# MIG: no GPU_UTIL; one series per GPU instance, with GPU_I_PROFILE / GPU_I_ID.
MIG_1 = dcgm_gpu(0, "GPU-cccc", GPU_I_PROFILE="3g.40gb", GPU_I_ID="1", Hostname="n2")
MIG_2 = dcgm_gpu(0, "GPU-cccc", GPU_I_PROFILE="4g.40gb", GPU_I_ID="2", Hostname="n2")
DCGM_MIG_TEXT = dcgm_text(
    {
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE": [(MIG_1, "0.5"), (MIG_2, "0.25")],
        "DCGM_FI_DEV_FB_USED": [(MIG_1, "30000"), (MIG_2, "10000")],
        "DCGM_FI_DEV_FB_FREE": [(MIG_1, "10000"), (MIG_2, "30000")],
        "DCGM_FI_DEV_POWER_USAGE": [(MIG_1, "301"), (MIG_2, "301")],
    }
)


@pytest.fixture
def dcgm_exporter() -> Iterator[Callable[[str], str]]:
    """A local HTTP server answering /metrics with whatever text the test sets; yields set(text) -> URL."""
    body = {"text": ""}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body["text"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = False
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()

    def serve(text: str) -> str:
        body["text"] = text
        return f"http://127.0.0.1:{server.server_address[1]}/metrics"

    yield serve
    server.shutdown()
    server.server_close()
    thread.join()


def test_dcgm_exporter_series_become_samples_keyed_by_gpu_and_uuid(
    dcgm_exporter: Callable[[str], str],
) -> None:
    source = DcgmSource(dcgm_exporter(DCGM_TEXT), "node-a", clock=Clock(7.0))
    first, second = source.samples()
    assert (first.index, first.uuid, first.name, first.node, first.at) == (
        0,
        "GPU-aaaa",
        "NVIDIA H100 80GB HBM3",
        "node-a",
        7.0,
    )
    assert first.utilization_ratio == pytest.approx(0.93)
    assert first.memory_used_bytes == 61000 * 2**20
    assert first.memory_total_bytes == (61000 + 20559) * 2**20
    assert first.power_watts == pytest.approx(512.25)
    assert first.temperature_celsius == 61
    assert first.sm_clock_hertz == pytest.approx(1.98e9)
    assert first.mig_enabled is False and first.errors == {}
    assert second.uuid == "GPU-bbbb" and second.utilization_ratio == 0.0
    assert second.temperature_celsius is None and second.errors == {"temperature_celsius": "blank"}
    source.close()


def test_dcgm_under_mig_uses_engine_activity_weighted_by_slices(dcgm_exporter: Callable[[str], str]) -> None:
    (gpu,) = DcgmSource(dcgm_exporter(DCGM_MIG_TEXT), "node-b").samples()
    assert gpu.uuid == "GPU-cccc" and gpu.mig_enabled is True
    assert gpu.utilization_ratio == pytest.approx((0.5 * 3 + 0.25 * 4) / 7)
    assert gpu.memory_used_bytes == 40000 * 2**20
    assert gpu.memory_total_bytes == 80000 * 2**20
    assert gpu.power_watts == 301  # a device field repeated on each instance's series counts once


def test_an_unreachable_dcgm_exporter_is_one_clear_error() -> None:
    pattern = r"^cannot read dcgm-exporter at http://127\.0\.0\.1:9/metrics \("
    with pytest.raises(DcgmUnavailable, match=pattern):
        DcgmSource("127.0.0.1:9/metrics", "node-a", timeout_s=0.5)


def test_parse_dcgm_ignores_fields_it_does_not_map() -> None:
    assert parse_dcgm(dcgm_text({"DCGM_FI_DEV_XID_ERRORS": [(A, "43")]}), "n") == []


# ---- the agent over HTTP -----------------------------------------------------------------------------


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


@pytest.fixture
def served_nvml_agent() -> Iterator[tuple[Agent, str, FakeNvml]]:
    nvml = FakeNvml(gpus=2)
    nvml.fail(1, "nvmlDeviceGetPowerUsage", nvml.NVMLError_NotSupported)
    agent = Agent(NvmlSource("node-a", nvml=nvml), interval=0.02).start()
    server = agent.serve(0, host="127.0.0.1")
    yield agent, server.url, nvml
    agent.stop()
    assert nvml.initialised == 0  # stop() closed the source


def test_the_agent_serves_every_gpu_metric_with_its_labels(
    served_nvml_agent: tuple[Agent, str, FakeNvml],
) -> None:
    _, url, nvml = served_nvml_agent
    parsed = families(_get(url))
    expected = set(GPU_METRICS) - {"orch_gpu_idle_seconds_total"}  # NVML knows no runs: nothing is held
    assert expected <= set(parsed)
    for name in expected:
        family = parsed[name]
        assert family.type == GPU_METRICS[name][0]
        assert family.documentation == GPU_METRICS[name][1]
        assert family.samples, name
        for sample in family.samples:
            assert set(sample.labels) == {*GPU_LABELS, *EXTRA_LABELS.get(name, ())}, (name, sample)
            assert sample.labels["node"] == "node-a"
            assert sample.labels["uuid"] == nvml.gpus[int(sample.labels["gpu"])].uuid

    assert value(parsed["orch_gpu_utilization_ratio"], gpu="0") == pytest.approx(0.87)
    assert value(parsed["orch_gpu_memory_total_bytes"], gpu="1") == 81_559 * 2**20
    assert value(parsed["orch_gpu_power_watts"], gpu="0") == pytest.approx(612.0)
    assert [s.labels["gpu"] for s in parsed["orch_gpu_power_watts"].samples] == ["0"]
    assert value(parsed["orch_gpu_sm_clock_hertz"], gpu="1") == pytest.approx(1.98e9)
    assert value(parsed["orch_gpu_clock_throttle_active"], gpu="0", reason="sw_power_cap") == 1
    assert value(parsed["orch_gpu_clock_throttle_active"], gpu="0", reason="hw_slowdown") == 0
    assert value(parsed["orch_gpu_ecc_errors_total"], gpu="0", type="aggregate_corrected") == 7
    assert value(parsed["orch_gpu_mig_enabled"], gpu="0") == 0
    assert value(parsed["orch_gpu_process_memory_used_bytes"], gpu="1", pid="4242") == 60 * GIB
    first = value(
        parsed["orch_gpu_telemetry_errors_total"], gpu="1", field="power_watts", error="not_supported"
    )
    assert first >= 1
    assert "process_cpu_seconds_total" in _get(url)  # the agent's own cost is exported too

    # The sampler thread keeps counting between scrapes: the counter only grows.
    deadline = threading.Event()
    later = first
    for _ in range(100):
        later = value(families(_get(url))["orch_gpu_telemetry_errors_total"], gpu="1", field="power_watts")
        if later > first:
            break
        deadline.wait(0.02)
    assert later > first


def test_promtool_finds_no_problem_in_the_agent_metrics(
    served_nvml_agent: tuple[Agent, str, FakeNvml],
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
    _, url, _ = served_nvml_agent
    text = _get(url)
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout == "" and checked.stderr == "", checked


def test_idle_seconds_accumulate_only_for_gpus_held_by_a_run() -> None:
    clock = Clock()
    source = SimulatedGpuSource("sim-0", gpus=3, seed=1, clock=clock)
    source.set_load(0, 0.0, 2 * GIB, run="r1", role="trainer", pool="h100")
    source.set_load(1, 0.9, 60 * GIB, run="r1", role="rollout", pool="h100")
    source.set_load(2, 0.0, 0)  # idle but held by no run: not counted
    collector = GpuCollector(source.samples)
    for _ in range(4):
        parsed = scrape(collector)
        clock.now += 1.5
    idle = parsed["orch_gpu_idle_seconds_total"]
    assert value(idle, gpu="0", run="r1", role="trainer", pool="h100") == pytest.approx(4.5)
    assert value(idle, gpu="1", run="r1", role="rollout") == 0
    assert not [s for s in idle.samples if s.labels["gpu"] == "2"]
    assert value(parsed["orch_gpu_memory_used_bytes"], gpu="1", run="r1") == 60 * GIB
    assert value(parsed["orch_gpu_utilization_ratio"], gpu="1") == pytest.approx(0.9, abs=0.02)


def test_the_simulated_source_follows_set_load_and_wanders_otherwise() -> None:
    source = SimulatedGpuSource("sim-0", gpus=8, seed=0)
    again = SimulatedGpuSource("sim-0", gpus=8, seed=0)
    assert [s.uuid for s in source.samples()] == [s.uuid for s in again.samples()]  # seeded
    assert len({s.uuid for s in source.samples()}) == 8
    source.set_load(2, 0.0, 0, run="r9")
    readings = [source.samples() for _ in range(20)]
    idle = [r[2] for r in readings]
    assert {s.utilization_ratio for s in idle} == {0.0} and {s.run for s in idle} == {"r9"}
    assert idle[-1].throttle_reasons == ("gpu_idle",) and idle[-1].processes == ()
    assert len({r[0].utilization_ratio for r in readings}) > 5  # undriven GPUs move
    for sample in readings[-1]:
        assert 0 <= sample.utilization_ratio <= 1
        assert 0 < sample.memory_used_bytes <= sample.memory_total_bytes or sample.index == 2
        assert 60 <= sample.power_watts <= sample.power_limit_watts == 700
    with pytest.raises(ValueError):
        source.set_load(0, 1.5, 0)


def test_a_failing_source_leaves_no_stale_samples() -> None:
    class Flaky:
        def __init__(self) -> None:
            self.fail = False

        def samples(self) -> list[GpuSample]:
            if self.fail:
                raise DcgmUnavailable("cannot read dcgm-exporter at http://x (refused)")
            return [GpuSample(node="n", index=0, uuid="GPU-1", utilization_ratio=0.5, at=1.0)]

        def close(self) -> None:
            pass

    flaky = Flaky()
    agent = Agent(flaky, interval=60)
    assert len(agent.sample_once()) == 1
    flaky.fail = True
    assert agent.sample_once() == [] and agent.latest() == []
    assert agent.last_error is not None and "refused" in agent.last_error
    agent.stop()


# ---- the CLI -----------------------------------------------------------------------------------------


def test_orch_agent_simulate_once_prints_the_gpu_metrics() -> None:
    result = CliRunner().invoke(main, ["agent", "--simulate", "--once", "--node", "sim-node"])
    assert result.exit_code == 0, result.stderr
    parsed = families(result.stdout)
    assert len(parsed["orch_gpu_utilization_ratio"].samples) == 8
    assert {s.labels["node"] for s in parsed["orch_gpu_memory_total_bytes"].samples} == {"sim-node"}


def test_orch_agent_dcgm_once_reads_the_exporter(dcgm_exporter: Callable[[str], str]) -> None:
    result = CliRunner().invoke(main, ["agent", "--dcgm", dcgm_exporter(DCGM_TEXT), "--once", "--node", "n1"])
    assert result.exit_code == 0, result.stderr
    assert value(families(result.stdout)["orch_gpu_power_watts"], gpu="0", uuid="GPU-aaaa") == 512.25


def test_orch_agent_rejects_a_bad_interval() -> None:
    result = CliRunner().invoke(main, ["agent", "--simulate", "--once", "--interval", "soon"])
    assert result.exit_code == 2 and "--interval" in result.stderr


@pytest.mark.parametrize(
    ("text", "seconds"), [("1s", 1.0), ("500ms", 0.5), ("0.1", 0.1), ("2m", 120.0), (" 1.5s ", 1.5)]
)
def test_intervals_parse_with_units(text: str, seconds: float) -> None:
    assert parse_interval(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "0", "-1s", "1h", "fast", "0ms"])
def test_bad_intervals_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_interval(text)


def test_a_taken_metrics_port_is_one_clear_error() -> None:
    agent = Agent(SimulatedGpuSource("sim-0", gpus=1), interval=60)
    server = agent.serve(0, host="127.0.0.1")
    with pytest.raises(OrchError, match=rf"^cannot serve metrics on 127\.0\.0\.1:{server.port} \("):
        agent.serve(server.port, host="127.0.0.1")
    agent.stop()


@pytest.mark.slow
def test_orch_agent_serves_until_sigterm() -> None:
    root = Path(__file__).resolve().parents[1]
    command = [
        sys.executable,
        str(root / "cli.py"),
        "agent",
        "--simulate",
        "--port",
        "0",
        "--host",
        "127.0.0.1",
    ]
    with subprocess.Popen(
        [*command, "--interval", "100ms"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root
    ) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("serving 8 GPUs of "), line
        url = line.split(" on ")[1].split()[0]
        parsed = families(_get(url))
        assert len(parsed["orch_gpu_power_watts"].samples) == 8
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
