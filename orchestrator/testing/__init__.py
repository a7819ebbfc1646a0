"""Doubles shipped with the package: a fake OpenAI-compatible engine and a fake NVML (used by benches and
tests to run the balancer, router and exporter without GPUs). Production modules never import them.

orch's Kubernetes test rig (fake API server, kubelet, scripted trainer) is not shipped: see `tests/kube_rig`.
"""

__all__: list[str] = []
