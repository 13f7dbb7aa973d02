"""The session Ray of tests/ray/ as a handle: its address and the processes it started."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass
class RayCluster:
    address: str
    client_address: str
    """``ray://127.0.0.1:PORT``: the cluster's Ray Client server, for sandboxed server jobs."""
    processes: list[psutil.Process]
    """What starting Ray spawned (GCS, raylet, agents, workers), for the sockets test and cleanup."""

    def members(self) -> list[psutil.Process]:
        """Every live process of the cluster now (workers and actors come and go)."""
        seen: dict[int, psutil.Process] = {}
        for proc in self.processes:
            try:
                if proc.is_running():
                    seen[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        seen[child.pid] = child
            except psutil.NoSuchProcess:
                continue
        return list(seen.values())


def listening(pids: set[int]) -> list[tuple[int, str]]:
    """(pid, local address) of every listening TCP socket of ``pids``, from ``ss -ltnp``."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        local = fields[3]
        for part in line.split("pid=")[1:]:
            pid = int(part.split(",")[0])
            if pid in pids:
                found.append((pid, local))
    return found


def ray_spec(base_url: str, name: str = "on-ray") -> dict[str, Any]:
    """A small arithmetic spec for the fake LLM at ``base_url`` that asks for 2 Ray workers."""
    return {
        "name": name,
        "dataset": {"path": "data.jsonl", "fields": {"id": "id", "input": "question", "target": "answer"}},
        "solver": "generate",
        "scorer": "numeric",
        "models": {"subject": {"base_url": base_url, "model": "fake"}},
        "concurrency": 4,
        "executor": {"kind": "ray", "workers": 2},
    }
