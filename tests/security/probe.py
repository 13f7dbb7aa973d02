"""What a hostile job does from the inside (run by the ``probe`` command template in tests).

    probe.py look DATA_DIR SERVER_PID    try to see and touch what belongs to the server and other
                                         jobs; print one ``PROBE {json}`` line with what worked
    probe.py fork MARKER                 leave fork→setsid→fork and fork→setpgid→fork sleepers
                                         (``sleep MARKER``), then sleep
    probe.py alloc MEGABYTES             allocate that much memory, 64 MB at a time
    probe.py sleep SECONDS               sleep
    probe.py memfd MEGABYTES             write that much into a memfd (memory no RLIMIT_AS sees),
                                         printing ``memfd N MB`` per 64 MB and ``MEMFD ALL`` at the end
    probe.py forkalloc CHILDREN MEGABYTES  fork CHILDREN processes that each fill MEGABYTES of memory
                                         and hold it; ``FORKALLOC ALL`` once every child held it
    probe.py cgroup SECONDS              print ``CGROUP {json}`` (``/proc/self/cgroup``), then sleep
    probe.py steal JOB PORT              look for any job's key or facade token in /proc/*/environ and
                                         call JOB's private model with each (and with none); print
                                         ``STEAL {json}`` with the statuses
    probe.py limits HOLD                 print ``LIMITS {json}``: the rlimits the job runs under, and
                                         how many of 300 ``sleep`` children it could start (held
                                         HOLD seconds before they are killed)
    probe.py filltmp MEGABYTES           write up to that many MiB to /tmp (1 MiB files, each far below
                                         RLIMIT_FSIZE); print ``FILLTMP {json}``: MiB written, the
                                         error that stopped it, /tmp's size, HOME

The findings are data for the test to judge; this script asserts nothing itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def _try(fn):  # type: ignore[no-untyped-def]
    try:
        return {"ok": True, "value": fn()}
    except Exception as exc:  # noqa: BLE001 - every failure is a finding
        return {"ok": False, "error": type(exc).__name__}


def look(data_dir: str, server_pid: int) -> dict:
    environs = {}
    cmdlines = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            env = _try(lambda e=entry: Path(f"/proc/{e}/environ").read_bytes().decode(errors="replace"))
            if env["ok"]:
                environs[entry] = env["value"]
            cmd = _try(lambda e=entry: Path(f"/proc/{e}/cmdline").read_bytes().decode(errors="replace"))
            if cmd["ok"]:
                cmdlines[entry] = cmd["value"]
    data = Path(data_dir)
    return {
        "uid": os.getuid(),
        "environs": environs,
        "cmdlines": cmdlines,
        "kill_server": _try(lambda: os.kill(server_pid, signal.SIGTERM)),
        "parent_environ": _try(lambda: Path(f"/proc/{os.getppid()}/environ").read_text()),
        "data_dir": _try(lambda: sorted(os.listdir(data))),
        "jobs": _try(lambda: sorted(os.listdir(data / "jobs"))),
        "store_read": _try(lambda: len((data / "proctor.sqlite").read_bytes())),
        "store_write": _try(lambda: (data / "proctor.sqlite").open("ab").write(b"x")),
        "own_spec_write": _try(lambda: Path("spec.yaml").open("ab").write(b"x")),
        "own_out_write": _try(lambda: Path("out/probe.txt").write_text("x")),
        "root_home": _try(lambda: sorted(os.listdir("/root"))),
        "home": _try(lambda: sorted(os.listdir("/home"))),
        "shadow": _try(lambda: Path("/etc/shadow").read_text()[:10]),
    }


def fill_tmp(megabytes: int) -> dict:
    import errno

    block = b"\0" * (1024 * 1024)
    written, error = 0, None
    try:
        for i in range(megabytes):
            with open(f"/tmp/fill-{i}", "wb") as fh:
                fh.write(block)
            written += 1
    except OSError as exc:
        error = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    st = os.statvfs("/tmp")
    return {
        "written_mb": written,
        "error": error,
        "tmp_mb": st.f_blocks * st.f_frsize // (1024 * 1024),
        "home": os.environ.get("HOME"),
    }


def forkalloc(children: int, megabytes: int) -> int:
    pids = []
    for i in range(children):
        pid = os.fork()
        if pid == 0:
            held = [b"\x01" * (1024 * 1024) for _ in range(megabytes)]  # filled, so resident
            print(f"child {i} holds {len(held)} MB", flush=True)
            time.sleep(5)
            os._exit(0)
        pids.append(pid)
    codes = [os.waitpid(pid, 0)[1] for pid in pids]
    if all(code == 0 for code in codes):
        print("FORKALLOC ALL", flush=True)
        return 0
    print(f"children ended with {codes}", flush=True)
    return 1


def main() -> int:
    mode = sys.argv[1]
    if mode == "look":
        print("PROBE " + json.dumps(look(sys.argv[2], int(sys.argv[3]))), flush=True)
    elif mode == "fork":
        for i in range(4):
            if os.fork() == 0:
                os.setsid() if i % 2 else os.setpgid(0, 0)
                if os.fork() == 0:
                    os.execvp("sleep", ["sleep", sys.argv[2]])
                os._exit(0)
        print("FORKED", flush=True)
        time.sleep(600)
    elif mode == "alloc":
        held = []
        for i in range(int(sys.argv[2]) // 64):
            held.append(bytearray(64 * 1024 * 1024))
            print(f"allocated {(i + 1) * 64} MB", flush=True)
        print("ALLOCATED ALL", flush=True)
    elif mode == "limits":
        import resource
        import subprocess

        limits = {
            name: resource.getrlimit(getattr(resource, f"RLIMIT_{name}"))[1]
            for name in ("AS", "NPROC", "FSIZE", "NOFILE")
        }
        started = []
        for _ in range(300):
            try:
                started.append(subprocess.Popen(["sleep", "30"]))
            except OSError:
                break
        print("LIMITS " + json.dumps({**limits, "children": len(started), "uid": os.getuid()}), flush=True)
        time.sleep(float(sys.argv[2]))
        for child in started:
            child.kill()
            child.wait()
    elif mode == "steal":
        import urllib.error
        import urllib.request

        tokens = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    env = Path(f"/proc/{entry}/environ").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                for item in env.split("\0"):
                    name, _, value = item.partition("=")
                    if name == "OPENAI_API_KEY" or name.startswith("PROCTOR_API_KEY_"):
                        tokens.add(value)
        statuses = []
        url = f"http://127.0.0.1:{sys.argv[3]}/internal/jobs/{sys.argv[2]}/v1/chat/completions"
        body = json.dumps({"model": "fake", "messages": [{"role": "user", "content": "stolen prompt"}]}).encode()
        for token in [*sorted(tokens), None]:
            headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
            try:
                with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=20) as r:
                    statuses.append(r.status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
            except OSError as exc:
                statuses.append(type(exc).__name__)
        print("STEAL " + json.dumps({"tokens_found": len(tokens), "statuses": statuses}), flush=True)
    elif mode == "filltmp":
        print("FILLTMP " + json.dumps(fill_tmp(int(sys.argv[2]))), flush=True)
    elif mode == "sleep":
        time.sleep(float(sys.argv[2]))
    elif mode == "memfd":
        fd = os.memfd_create("probe")
        chunk = b"\x01" * (1024 * 1024)
        for i in range(int(sys.argv[2])):
            os.write(fd, chunk)
            if (i + 1) % 64 == 0:
                print(f"memfd {i + 1} MB", flush=True)
        print("MEMFD ALL", flush=True)
    elif mode == "forkalloc":
        return forkalloc(int(sys.argv[2]), int(sys.argv[3]))
    elif mode == "cgroup":
        print("CGROUP " + json.dumps(Path("/proc/self/cgroup").read_text().splitlines()), flush=True)
        time.sleep(float(sys.argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
