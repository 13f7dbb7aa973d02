"""lm-evaluation-harness tasks as proctor runs (``lm_eval:`` in a spec; docs/lm-eval.md).

lm-eval builds the requests and computes the metrics; proctor sends every request through its
own model layer and records each answer in the run's ledger, so a killed run redoes no answered
request and a request that keeps failing withholds the metrics instead of crashing the run.
lm-eval itself is an optional extra (``proctor[lm-eval]``), imported only when a spec needs it.
"""
