"""Stand-in for a command template's program: records its argv in out/argv.json and exits 0."""

import json
import os
import sys
from pathlib import Path

out = Path(os.environ.get("PROCTOR_OUT_DIR", "out"))
out.mkdir(parents=True, exist_ok=True)
(out / "argv.json").write_text(json.dumps(sys.argv[1:]), encoding="utf-8")
