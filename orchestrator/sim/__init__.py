"""Everything simulated: the engine cost model, simulated engines, rollout shapes, the simulated rollout
phase and trainer, the simulated GPU pool and its telemetry, simulated tools.

Used by the ``sim`` backend, ``--simulate``, benches and tests; never by what serves real engines
(``orchestrator.rollout`` does not import this package).
"""
