"""The Kubernetes adapter: the only package that imports the ``kubernetes`` client.

``backend`` assembles it; ``api`` (reaching the API server), ``cluster`` (nodes and pods, fed by
``informer`` watches), ``mailbox`` (work handed to the trainer gang), ``training_runs`` (TrainingRun
objects ≡ ``orch submit``) and ``objects`` (the pure builders and readers of the objects orch writes) run
it. ``trainer_transport`` is the trainer's side of the mailbox, run in the trainer pod. ``crd`` (the
TrainingRun CRD, its group, version and plural), ``manifests`` (rendering ``manifests/``) and ``rbac``
(what the controller's account may do) describe it; ``doctor`` checks a cluster is ready for it.
"""
