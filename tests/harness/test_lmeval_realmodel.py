"""examples/lm-eval against the real small model (Qwen2.5-Coder-0.5B on llama.cpp, CPU): both
tasks, generation and loglikelihood (echo + logprobs), complete with metrics.

Run with: ``.venv/bin/python -m pytest --realmodel -m realmodel -s tests/harness/test_lmeval_realmodel.py``
(needs ``llama-cpp-python[server]`` and the model in ~/.cache/proctor/models: ``scripts/demo.sh``
sets both up). The metrics are printed; they are the model's, so the test checks their shape only.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from helpers import run_proctor, stop_process

from proctor.models.assets import resolve_model_path
from proctor.models.config import LaunchConfig
from proctor.models.launch import build_argv

pytest.importorskip("lm_eval")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lm-eval"
MODEL = "qwen2.5-coder-0.5b-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.realmodel
def test_the_example_tasks_run_against_the_real_model(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp.server")
    port = free_port()
    cfg = LaunchConfig(
        kind="llama-cpp",
        model_path=resolve_model_path("asset:qwen2.5-coder-0.5b-instruct-q4_k_m"),
        port=port,
        # --logits_all: llama.cpp computes the prompt's logprobs (echo), which loglikelihood needs.
        extra_args=["--n_threads", "2", "--n_ctx", "2048", "--logits_all", "True"],
    )
    log = tmp_path / "llama.log"
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            build_argv(cfg, model=MODEL), stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        base = f"http://127.0.0.1:{port}/v1"
        for _ in range(900):  # bounded: 180 s to load the model
            assert server.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("llama.cpp did not come up:\n" + log.read_text()[-3000:])
        out = tmp_path / "run"
        spec = EXAMPLE / "spec.yaml"
        args = ["run", spec, "--out", out, "-m", f"subject={base}@{MODEL}", "--concurrency", "2", "--progress", "plain"]
        result = run_proctor(*args, timeout=3600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        stop_process(server)
    stats = json.loads((out / "eval_stats.json").read_text())
    assert stats["status"] == "complete" and stats["requests"]["failed"] == 0
    values = {(b["task"], b["metric"]): b for b in stats["metrics"]}
    assert {("proctor_arith", "exact_match"), ("proctor_arith_mc", "acc"), ("proctor_arith_mc", "acc_norm")} <= set(
        values
    )
    assert values[("proctor_arith", "exact_match")]["n"] == 40 and values[("proctor_arith_mc", "acc")]["n"] == 30
    for block in values.values():
        assert 0.0 <= block["value"] <= 1.0
    print("\nreal-model metrics (examples/lm-eval, Qwen2.5-Coder-0.5B-Instruct Q4_K_M, llama.cpp):")
    for (task, metric), block in sorted(values.items()):
        print(
            f"  {task} {metric} ({block['filter']}): {block['value']:.4f} ± {block['stderr'] or 0:.4f}  n={block['n']}"
        )
    print(f"  requests: {stats['requests']}, wall {stats['wall_time_s']} s")
