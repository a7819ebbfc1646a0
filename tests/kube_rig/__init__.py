"""orch's Kubernetes test rig: a wire-level fake API server, a scripted kubelet and a scripted trainer.

`api_server.FakeKubeServer` speaks the apiserver's HTTP+JSON to the unmodified `kubernetes` client,
`kubelet.FakeKubelet` schedules and runs its pods (simulated) and injects failures, `trainer.ScriptedTrainer`
plays the trainer side of the mailbox in `orchestrator.kube.mailbox`, and `processes.ProcessKubelet` runs
each pod's container as a real local process instead. Tests import them; orch never does.
"""
