# Shared by scripts/test.sh and scripts/demo.sh (sourced, not run): what both need before proctor
# itself, installed by the scripts themselves on a fresh Debian/Ubuntu machine.

PYTHON=${PYTHON:-python3}

# apt_install PACKAGE...: install Debian packages when we can (root with apt-get), else say how.
apt_install() {
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "==> installing Debian packages: $* (apt-get, about a minute)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "error: proctor needs the Debian/Ubuntu packages: $*" >&2
    echo "       install them with: sudo apt-get install $*" >&2
    return 2
  fi
}

# ensure_venv: .venv exists (creating it, and python3-venv if Debian split it off).
ensure_venv() {
  if [ -x .venv/bin/python ]; then
    return 0
  fi
  echo "==> creating the virtual environment .venv"
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv || return 2
    "$PYTHON" -m venv .venv
  fi
}

# ensure_bwrap: bubblewrap, the sandbox of every server job and every python-tool call.
ensure_bwrap() {
  if command -v bwrap >/dev/null 2>&1; then
    return 0
  fi
  apt_install bubblewrap
}

# ensure_chromium: Debian's chromium, which the dashboard's browser tests drive through Playwright
# (tests/web/). Optional: without it (and without root to install it) only those tests skip.
ensure_chromium() {
  if [ -x /usr/bin/chromium ]; then
    return 0
  fi
  apt_install chromium || echo "note: the dashboard's browser tests will be skipped"
}

# ensure_postgres: PostgreSQL's server binaries, for the tests that run the job store on it.
# Optional: without them (and without root to install them) those tests skip with the reason.
ensure_postgres() {
  if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    return 0
  fi
  apt_install postgresql || echo "note: the PostgreSQL job-store tests will be skipped"
}
