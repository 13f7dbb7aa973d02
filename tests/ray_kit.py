"""The session Ray of tests/ray/ as a handle: its address and the processes it started."""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass
class RayCluster:
    address: str
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
