"""GPU telemetry: NVML, dcgm-exporter and simulated sources, the Prometheus exporter and the agent.

pynvml is imported only in ``telemetry.nvml``.
"""
