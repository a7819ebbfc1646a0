"""Test doubles shipped with the package.

`kube_fake.FakeKubeServer` is a wire-level fake Kubernetes API server and `kubelet.FakeKubelet` a scripted
kubelet + scheduler that drives it. Tests import them; production modules never do.
"""

__all__: list[str] = []
