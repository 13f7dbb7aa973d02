"""Private mode: a job's model calls travel back to the submitter's own model over a WebSocket.

``hub`` (server side: authenticated agent connections, dispatch, replay), ``facade`` (the
job-facing OpenAI-compatible endpoint), ``channel`` and ``channel_client`` (the job channel: a
proctor job's calls as envelopes over one WebSocket), ``agent`` (submitter side) and
``protocol`` (the wire format). Only the agent's API is re-exported here, so that ``proctor tunnel`` and
``proctor submit --private`` do not import the server's machinery; see ``docs/tunnel.md``.
"""

from __future__ import annotations

from proctor.tunnel.agent import AgentStats, TunnelAgent, run_agent, run_agent_sync

__all__ = ["AgentStats", "TunnelAgent", "run_agent", "run_agent_sync"]
