"""Starting a private Ray on 127.0.0.1, or joining a cluster, and leaving it again.

Ray binds the machine's external address by default and starts a dashboard and usage-stats
reporting; a private Ray started for one ``proctor run`` must expose nothing beyond loopback, so
every address Ray would pick is pinned to 127.0.0.1 and the optional services are off
(``tests/ray/test_ray_executor.py`` checks every listening socket of the Ray processes).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from proctor.errors import ExecutorError, InputError

log = logging.getLogger("proctor.ray")

INSTALL_HINT = "pip install 'proctor[ray]'"
OBJECT_STORE_BYTES = 150 * 1024 * 1024
"""The private Ray's object store: samples and results are small, so a small store suffices and
keeps an idle head's memory low on a shared machine."""
LOOPBACK = "127.0.0.1"


def import_ray(*, loopback: bool = False) -> ModuleType:
    """``ray``, or one line saying how to install it (exit 2) when the optional extra is missing.

    ``loopback``: this process's Ray node address is 127.0.0.1. Ray 2.x turns a given 127.0.0.1
    into the machine's external address unless its "no cluster" switch is set (meant for
    laptops: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), and only a node whose address is 127.0.0.1
    has its gRPC servers listen on loopback alone. Ray reads the switch when it is imported, and
    the processes it starts inherit it.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if loopback:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
    except ImportError:
        raise InputError(f"--executor ray needs the ray package, which is not installed: {INSTALL_HINT}") from None
    return ray


def _is_loopback(address: str) -> bool:
    host = urlsplit(address if "://" in address else f"ray://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_client_address(address: str) -> bool:
    """``ray://HOST:PORT``: the cluster's Ray Client server (``ray start --head`` opens it on 10001).

    A Ray Client driver talks gRPC over TCP only, so it works where a GCS-address driver cannot: in
    a server job's sandbox, whose own PID namespace and private ``/tmp`` hide the node's raylet.
    """
    return address.startswith("ray://")


@dataclass
class RaySession:
    """This process's connection to Ray; ``close`` disconnects, and stops Ray if it started it."""

    ray: ModuleType
    address: str | None
    """The cluster joined, or None for the private Ray this session started."""

    @property
    def started_here(self) -> bool:
        return self.address is None

    @classmethod
    def open(cls, address: str | None, *, workers: int) -> RaySession:
        ray = import_ray(loopback=address is None or _is_loopback(address))
        common: dict[str, Any] = {
            "log_to_driver": False,  # the actors' logs stay in Ray's session directory
            "logging_level": logging.WARNING,
            "namespace": "proctor",
        }
        try:
            if address is None:
                # A private Ray: never the one RAY_ADDRESS points at, nothing bound beyond loopback.
                os.environ.pop("RAY_ADDRESS", None)
                ray.init(
                    _node_ip_address=LOOPBACK,
                    include_dashboard=False,
                    num_cpus=max(workers, os.cpu_count() or 1),
                    object_store_memory=OBJECT_STORE_BYTES,
                    **common,
                )
            elif is_client_address(address):
                # Ray Client: gRPC over TCP to the cluster's client server; no local raylet needed.
                _init_client(ray, address, common)
            else:
                extra: dict[str, Any] = {"_node_ip_address": LOOPBACK} if _is_loopback(address) else {}
                ray.init(address=address, **common, **extra)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise ExecutorError(
                f"could not start or reach {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        log.info("ray: %s", f"joined the cluster at {address}" if address else "started a private Ray on 127.0.0.1")
        return cls(ray, address)

    def close(self) -> None:
        """Disconnect; a private Ray's processes (GCS, raylet, workers) stop with it."""
        self.ray.shutdown()


CLIENT_ATTEMPTS = 3
"""Tries to join through Ray Client. Its server forks a "specific server" process per client, whose
start-up can fail on a loaded host ("Initialization failure from server"); a new try gets a new one."""


def _init_client(ray: Any, address: str, common: dict[str, Any]) -> None:
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            ray.init(address=address, **common)
            return
        except ConnectionError as exc:
            if attempt == CLIENT_ATTEMPTS:
                raise
            log.warning(
                "ray: joining %s failed (%s); trying again", address, str(exc).splitlines()[0] if str(exc) else ""
            )
            time.sleep(2.0 * attempt)
