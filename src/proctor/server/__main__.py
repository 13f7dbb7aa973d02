"""``python -m proctor.server ...`` = ``proctor serve ...`` (works without the top-level CLI)."""

from __future__ import annotations

from proctor.cli.server_cmd import serve_main

if __name__ == "__main__":
    serve_main()
