"""The server's side of private mode: the hub and the two ways in for a job's calls.

``hub`` keeps each private job's calls and hands them to the submitter's agents; ``facade`` is
the OpenAI-compatible HTTP way in (any client), ``channel`` the WebSocket of envelopes (proctor
jobs). The wire protocol they share with the agent and the engine is ``proctor.tunnel.protocol``.
"""
