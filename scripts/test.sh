#!/usr/bin/env bash
# Runs proctor's whole test suite; sets up .venv first when needed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_setup.sh
ensure_venv
echo "==> installing proctor and its test dependencies into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "==> running the tests"
exec .venv/bin/python -m pytest -n 2 "$@"
