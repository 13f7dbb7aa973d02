"""One private Ray per test session for tests/ray/, started the way `proctor run` starts its own.

Ray's head costs seconds and ~700 MB, so every test here shares it: `proctor run` processes join
it with ``--ray-address``. The module is one xdist group (``--dist loadgroup`` in scripts/test.sh),
so a parallel run starts it once. Stopped by its own handle at the end: ``ray.shutdown()``, then
whatever it started and is still alive is killed.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from ray_kit import RayCluster


def start_client_server(ray: Any) -> str:
    """Open the Ray Client server ``ray start --head`` would, on a free loopback port.

    ``ray.init()`` starts no client server, and ``ray start`` detaches its processes from the test
    (no handle to stop them by), so the session Ray starts it the way ``ray start`` does: a child
    of this process, stopped with the rest at the end.
    """
    from ray._private.services import start_ray_client_server

    node = ray._private.worker._global_node
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start_ray_client_server(
        node.address, "127.0.0.1", port, runtime_env_agent_address=node.runtime_env_agent_address, node_id=node.node_id
    )
    return f"ray://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    if importlib.util.find_spec("ray") is None:  # not imported here: Ray must be imported after its settings
        pytest.skip("the ray extra is not installed (pip install 'proctor[ray]')")
    from proctor.executors.ray_cluster import RaySession

    # Ray's own directory, not the host's /tmp/ray: other test sessions and engineers start Rays on
    # this host too, and ray.init() joins the cluster a `ray start` wrote to
    # /tmp/ray/ray_current_cluster instead of starting one. Short, for Ray's socket paths.
    temp = tempfile.mkdtemp(prefix="proctor-ray-")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", temp)
        me = psutil.Process()
        before = {p.pid for p in me.children(recursive=True)}
        session = RaySession.open(None, workers=2)
        client_address = start_client_server(session.ray)
        started = [p for p in me.children(recursive=True) if p.pid not in before]
        cluster = RayCluster(session.ray.get_runtime_context().gcs_address, client_address, started)
        try:
            yield cluster
        finally:
            members = cluster.members()
            session.close()
        gone, alive = psutil.wait_procs(members, timeout=10)
        for proc in alive:
            proc.kill()
        psutil.wait_procs(alive, timeout=10)
    shutil.rmtree(temp, ignore_errors=True)
