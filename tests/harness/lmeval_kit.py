"""A plain lm-eval task for server tests: YAML and JSON Lines data, no Python, so it may be uploaded."""

from __future__ import annotations

import json

PLAIN_TASK = """task: plain_arith
dataset_path: json
dataset_kwargs:
  data_files: {test: tasks/plain.jsonl}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{answer}}"
generation_kwargs: {until: ["\\n"], max_gen_toks: 16, do_sample: false}
metric_list:
  - {metric: exact_match, aggregation: mean, higher_is_better: true}
"""


def plain_data(n: int) -> str:
    """``n`` additions the fake LLM's ``arith`` reply answers right."""
    rows = [{"question": f"What is {i} + {i + 3}?", "answer": str(2 * i + 3)} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows)
