"""orch's Kubernetes test rig: a wire-level fake API server, a scripted kubelet and a scripted trainer.

`api_server.FakeKubeServer` speaks the apiserver's HTTP+JSON to the unmodified `kubernetes` client,
`kubelet.FakeKubelet` schedules and runs its pods and injects failures, and `trainer.ScriptedTrainer`
plays the trainer side of the mailbox in `orchestrator.kube.mailbox`. Tests import them; orch never does.
"""
