"""The evaluation engine: specs, datasets, solvers, scorers, the ledger and the runner."""
