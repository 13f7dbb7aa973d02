"""A stand-in job for server tests: behaviours chosen by argv, no model needed.

jobscript.py sleep SECONDS          print a line, sleep, print done
jobscript.py lines N [DELAY]        print N numbered lines (with PROCTOR_PROGRESS lines)
jobscript.py family PIDFILE         start a grandchild in the same group, write both pids, sleep
                                    (PIDFILE relative to the job directory, e.g. out/pids: pids in
                                    the job's own PID namespace)
jobscript.py gate FILE              wait until FILE exists (bounded), then exit 0
jobscript.py exit CODE              exit with CODE
jobscript.py env                    say which model variables are set (never their values)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main() -> int:
    mode = sys.argv[1]
    print(f"start {mode} pid={os.getpid()}", flush=True)
    if mode == "sleep":
        time.sleep(float(sys.argv[2]))
    elif mode == "lines":
        n = int(sys.argv[2])
        delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
        for i in range(n):
            print(f"line {i}", flush=True)
            print(
                "PROCTOR_PROGRESS " + json.dumps({"done": i + 1, "total": n, "errors": 0, "accuracy": None}), flush=True
            )
            if delay:
                time.sleep(delay)
    elif mode == "family":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(sys.argv[2], "w") as fh:
            fh.write(f"{os.getpid()} {child.pid}")
        time.sleep(600)
    elif mode == "gate":
        for _ in range(6000):
            if os.path.exists(sys.argv[2]):
                break
            time.sleep(0.01)
    elif mode == "exit":
        return int(sys.argv[2])
    elif mode == "env":
        for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "PROCTOR_OPENAI_BASE_URL", "HOME_SECRET_TEST"):
            print(f"{name} {'set' if os.environ.get(name) else 'unset'}", flush=True)
        print(f"base_url={os.environ.get('OPENAI_BASE_URL')}", flush=True)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
