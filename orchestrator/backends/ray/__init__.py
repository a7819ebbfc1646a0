"""The Ray backend: the only package (with ``orchestrator.tools.ray_pool``) that imports ``ray``.

``backend`` assembles it; ``connect`` finds or starts the Ray head; ``cluster`` maps the cluster protocol
onto Ray (nodes from ``ray.nodes()``, a gang = a placement group, a member = a detached named actor);
``member`` is that actor, which launches and supervises the member's process.
"""
