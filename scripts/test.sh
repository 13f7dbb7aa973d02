#!/usr/bin/env bash
# Type-checks src/proctor (mypy), lints (ruff), then runs proctor's whole test suite; sets up .venv first when needed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_setup.sh
ensure_venv
ensure_bwrap
ensure_postgres
echo "==> installing proctor and its test dependencies into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,postgres]'
echo "==> type-checking src/proctor (mypy)"
.venv/bin/python -m mypy src/proctor
echo "==> linting (ruff)"
.venv/bin/python -m ruff check src tests bench
echo "==> running the tests"
exec .venv/bin/python -m pytest -n 2 "$@"
