"""The trainer SDK: what a user's trainer imports to take work from orch and hand results back.

Kept empty on purpose: importing one module (``orchestrator.worker.protocol`` from the Kubernetes
mailbox, say) must not pull in the rest of the SDK.
"""
