"""proctor lm-eval against lm-eval's own CLI: the same generation task, the same fake model.

A 2,000-document ``generate_until`` task (written into a temp dir, data beside it, no hub) is
run twice against one fake LLM server at 50 ms per request, each as the whole process a user
starts: ``lm_eval run --model local-completions ... num_concurrent=64`` and ``proctor lm-eval``
with the same flags. For each: process wall time, and time from process start to the server's
first request (lm-eval indexes its built-in task zoo first; proctor looks in include_path first).

    .venv/bin/python bench/lmeval.py [--docs 2000] [--latency 0.05] [--concurrency 64]

Prints both figures, the wall ratio proctor / lm-eval (goal <= 0.5) and PASS/FAIL.
Not run in CI: the figures depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from proctor.testing import FakeLLMConfig, FakeLLMProcess

EXAMPLE_TASKS = Path(__file__).resolve().parents[1] / "examples" / "lm-eval" / "tasks"
GOAL = 0.5

TASK_YAML = """task: bench_arith
custom_dataset: !function utils.load_docs
dataset_kwargs:
  data_file: docs.jsonl
output_type: generate_until
test_split: test
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_task(folder: Path, n: int) -> Path:
    """``n`` addition questions as an lm-eval task directory (the example's loader, local data)."""
    folder.mkdir(parents=True)
    shutil.copy(EXAMPLE_TASKS / "utils.py", folder / "utils.py")
    (folder / "bench_arith.yaml").write_text(TASK_YAML, encoding="utf-8")
    with (folder / "docs.jsonl").open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)}) + "\n")
    return folder


def timed(
    argv: list[str], llm: FakeLLMProcess, env: dict[str, str], cwd: Path, timeout: float = 1800.0
) -> dict[str, Any]:
    """Run ``argv`` to its end; the wall time and the time to the server's first request."""
    before = llm.stats()["requests"]
    start = time.perf_counter()
    first: float | None = None
    with open(cwd / "stderr.log", "w") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd)
        try:
            while proc.poll() is None and time.perf_counter() - start < timeout:
                if first is None and llm.stats()["requests"] > before:
                    first = time.perf_counter() - start
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[2]} exited {proc.returncode}:\n{(cwd / 'stderr.log').read_text()[-2000:]}")
    return {"wall": wall, "first_request": first, "requests": llm.stats()["requests"] - before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-lmeval-") as tmp,
        FakeLLMProcess(FakeLLMConfig(reply="arith", latency=args.latency)) as llm,
    ):
        root = Path(tmp)
        tasks = write_task(root / "tasks", args.docs)
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf")}
        model_args = (
            f"model=fake,base_url={llm.base_url}/completions,num_concurrent={args.concurrency},"
            "tokenizer_backend=none,tokenized_requests=False"
        )
        flags = [
            "--model",
            "local-completions",
            "--model_args",
            model_args,
            "--tasks",
            "bench_arith",
            "--include_path",
            str(tasks),
            "--gen_kwargs",
            "temperature=0",
        ]
        figures = {}
        for name, argv in (
            ("lm_eval", [sys.executable, "-m", "lm_eval", "run", *flags, "--output_path", str(root / "cli")]),
            (
                "proctor",
                [
                    sys.executable,
                    "-m",
                    "proctor",
                    "lm-eval",
                    "run",
                    *flags,
                    "--output_path",
                    str(root / "run"),
                    "--progress",
                    "none",
                ],
            ),
        ):
            (root / name).mkdir()
            figures[name] = timed(argv, llm, env, root / name)
    ratio = figures["proctor"]["wall"] / figures["lm_eval"]["wall"]
    print(
        f"{args.docs} generate_until documents, fake server at {args.latency * 1000:.0f} ms, "
        f"num_concurrent={args.concurrency}"
    )
    for name, fig in figures.items():
        first = f"{fig['first_request']:.2f} s" if fig["first_request"] is not None else "-"
        print(f"  {name:8s} wall {fig['wall']:7.2f} s   first request after {first}   requests {fig['requests']}")
    print(f"wall ratio proctor / lm_eval: {ratio:.3f} (goal <= {GOAL}) {'PASS' if ratio <= GOAL else 'FAIL'}")


if __name__ == "__main__":
    main()
