"""Private mode: a job's model calls travel back to the submitter's own model over a WebSocket.

This package holds what the submitter's side and both ends share: ``agent`` (submitter side) and
``protocol`` (the wire format). The server's parts (hub, facade, job channel) live in
``proctor.server.tunnel``; the engine's end of the job channel is a model transport,
``proctor.models.transport.channel``. Only the agent's API is re-exported here, so that ``proctor tunnel`` and
``proctor submit --private`` do not import the server's machinery; see ``docs/tunnel.md``.
"""

from __future__ import annotations

from proctor.tunnel.agent import AgentStats, TunnelAgent, run_agent, run_agent_sync

__all__ = ["AgentStats", "TunnelAgent", "run_agent", "run_agent_sync"]
