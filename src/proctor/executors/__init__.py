"""Executors other than the local one: where a run's samples are solved and scored.

The local executor is ``proctor.evals.runner.Runner`` itself (worker tasks on one event loop).
``ray_runner`` spreads the same per-sample path over Ray actors while the driver keeps the ledger,
the reports and the progress display (docs/ray.md).
"""
