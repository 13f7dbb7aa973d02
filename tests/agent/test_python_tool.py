"""The python sandbox: output, limits, secrets, and that nothing it starts survives it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import psutil

from proctor.evals.agent.tools.base import ToolCall, ToolCallContext, invoke_tool
from proctor.evals.agent.tools.python import PythonOptions, PythonTool, run_python
from proctor.evals.types import Sample

from .conftest import FakeModels, arun, make_ctx


def _alive(pid: int) -> bool:
    """Running (a zombie left to an init that does not reap is dead for our purposes)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _marker() -> str:
    """A unique ``sleep`` argument: the code's processes are found on this side by their command
    line, since the pids the code sees are those of its own PID namespace."""
    return f"{300 + random.random():.9f}"


def _with_marker(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if marker in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def test_prints_result_in_a_private_directory_that_is_removed() -> None:
    code = "import os\nprint(sum(int(d) for d in str(2**100)))\nprint(os.getcwd())\nopen('f.txt','w').write('x')"
    res = arun(run_python(code, PythonOptions(timeout=20)))
    assert res.returncode == 0 and not res.timed_out
    total, cwd = res.stdout.split()
    assert total == "115"
    assert cwd != os.getcwd() and Path(cwd).name.startswith("proctor-py-")
    assert not Path(cwd).exists()


def test_parent_secret_is_not_visible(monkeypatch) -> None:
    monkeypatch.setenv("PROCTOR_TEST_SECRET_KEY", "sk-very-secret-123")
    code = "import os,subprocess\nprint(dict(os.environ))\nprint(subprocess.run(['env'],capture_output=True,text=True).stdout)"
    res = arun(run_python(code, PythonOptions(timeout=20)))
    assert res.returncode == 0
    assert "sk-very-secret-123" not in res.stdout + res.stderr
    assert "PROCTOR_TEST_SECRET_KEY" not in res.stdout
    assert "HOME" in res.stdout  # the environment exists, it is just not the parent's


def test_runaway_loop_is_killed_at_the_wall_limit() -> None:
    marker = _marker()
    code = (
        f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'])\nprint('spinning', flush=True)\nwhile True: pass"
    )
    res = arun(run_python(code, PythonOptions(timeout=1.5)))
    assert res.timed_out and res.returncode is None and "spinning" in res.stdout
    assert _with_marker(marker) == []


def test_children_and_escaped_grandchildren_are_all_killed() -> None:
    # A sleeper in the same group, one that moved to its own session, fork→setsid→fork and
    # fork→setpgid→fork descendants, and the parent spinning.
    marker = _marker()
    code = (
        "import os, subprocess\n"
        f"a = subprocess.Popen(['sleep', '{marker}'])\n"
        f"b = subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
        "for i in range(20):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid() if i % 2 else os.setpgid(0, 0)\n"
        "        if os.fork() == 0:\n"
        f"            os.execvp('sleep', ['sleep', '{marker}'])\n"
        "        os._exit(0)\n"
        "print('forked', flush=True)\n"
        "while True: pass\n"
    )
    res = arun(run_python(code, PythonOptions(timeout=2)))
    assert res.timed_out and "forked" in res.stdout
    assert _with_marker(marker) == []


def test_background_child_of_a_finished_program_is_killed_without_waiting() -> None:
    marker = _marker()
    code = f"import subprocess\np = subprocess.Popen(['sleep', '{marker}'])\nprint(p.pid)"
    res = arun(run_python(code, PythonOptions(timeout=30)))
    assert not res.timed_out and res.returncode == 0  # returned when the program ended
    assert _with_marker(marker) == []


def test_memory_and_file_size_limits() -> None:
    res = arun(
        run_python("x = bytearray(1024 * 1024 * 1024)\nprint('allocated')", PythonOptions(memory_mb=256, timeout=20))
    )
    assert "MemoryError" in res.stderr and "allocated" not in res.stdout
    res = arun(
        run_python(
            "open('big','wb').write(b'x' * 3 * 1024 * 1024)\nprint('written')",
            PythonOptions(file_size_mb=1, timeout=20),
        )
    )
    assert "written" not in res.stdout and res.returncode != 0


def test_output_is_capped_but_drained() -> None:
    res = arun(run_python("print('a' * 200000)\nprint('END')", PythonOptions(output_chars=1000, timeout=20)))
    assert res.truncated and res.returncode == 0
    assert len(res.stdout) < 1200 and res.stdout.rstrip().endswith("END")


def test_tool_reports_errors_to_the_model() -> None:
    tool = PythonTool(PythonOptions(timeout=1))
    models = FakeModels()
    ctx, events = make_ctx(models)
    sample = Sample(id="p", input="x")

    async def go() -> list[str]:
        outs = []
        for i, code in enumerate(["1/0", "while True: pass", "print('ok')"]):
            call = ToolCall(f"c{i}", "python", {"code": code})
            out = await invoke_tool({"python": tool}, call, ToolCallContext(sample, ctx), turn=1)
            outs.append(out.content)
        return outs

    div, loop, ok = arun(go())
    assert "ZeroDivisionError" in div and "exit code 1" in div
    assert "wall-time limit" in loop
    assert ok == "ok"
    assert [e["tool"] for e in events.tools()] == ["python"] * 3
    assert all("execution" in e["steps"] for e in events.tools())


def test_code_has_no_network_unless_the_spec_allows_it() -> None:
    import socket

    import pytest

    from proctor.evals.agent.tools.python import network_isolation_prefix

    if not network_isolation_prefix():
        pytest.skip("network namespaces are not available on this machine")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = (
            "import socket\n"
            "s = socket.socket(); s.settimeout(5)\n"
            f"print('result', s.connect_ex(('127.0.0.1', {port})))\n"
        )
        isolated = arun(run_python(code, PythonOptions(timeout=20)))
        allowed = arun(run_python(code, PythonOptions(timeout=20, network=True)))
    assert "result 0" in allowed.stdout  # the listener is reachable from the host's network
    assert "result" in isolated.stdout and "result 0" not in isolated.stdout
