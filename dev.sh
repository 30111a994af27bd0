#!/usr/bin/env bash
# The two commands of the README, and the maintainers' helpers:
#   ./dev.sh demo [ARGS]          set up what is missing, then run `hiclaw demo`
#   ./dev.sh test [ARGS]          set up what is missing (from the lock, incl. test servers), run the
#                                 static checks (ruff, mypy), then the test suite (slow suites too)
#   ./dev.sh test --long [ARGS]   the same plus the long suites (the soak on a real small model, the
#                                 whole model-chaos matrix), with the real model set up: what CI runs
#   ./dev.sh test --latest [ARGS] the same in .venv-latest with the newest releases the version ranges
#                                 in pyproject.toml allow (no lock): shows drift on purpose
#   ./dev.sh check                the static checks only (ruff, mypy)
#   ./dev.sh lock                 re-resolve locks/*.txt (hash-pinned) from pyproject.toml with uv
#   ./dev.sh wheel                build the wheel into dist/
# Anything else is passed to the `hiclaw` command of the project's virtual environment.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cmd="${1:-demo}"; shift || true
LATEST=0
LONG=0
while [[ "$cmd" == "test" && ( "${1:-}" == "--latest" || "${1:-}" == "--long" ) ]]; do
  if [[ "$1" == "--latest" ]]; then LATEST=1; else LONG=1; fi
  shift
done
SETUP=(--test)
[[ $LONG -eq 1 ]] && SETUP+=(--realmodel)
if [[ $LATEST -eq 1 ]]; then VENV="${HICLAW_VENV:-$ROOT/.venv-latest}"; else VENV="${HICLAW_VENV:-$ROOT/.venv}"; fi
export HICLAW_VENV="$VENV"

static_checks() {
  cd "$ROOT"
  echo "[check] ruff check" >&2
  "$VENV/bin/ruff" check --quiet .
  echo "[check] mypy" >&2
  # mypy resolves hiclaw.* through the strict editable install (see scripts/setup.sh); the
  # example plugin is checked against the protocols it registers for.
  "$VENV/bin/mypy" --config-file pyproject.toml -p hiclaw
  "$VENV/bin/mypy" --config-file pyproject.toml examples/hiclaw-filechannel/hiclaw_filechannel.py
}

case "$cmd" in
  test)
    if [[ $LATEST -eq 1 ]]; then
      "$ROOT/scripts/setup.sh" "${SETUP[@]}" --latest
      echo "[latest] versions that differ from locks/test.txt:" >&2
      "$VENV/bin/python" "$ROOT/scripts/lock_drift.py" "$ROOT/locks/test.txt" >&2 || true
    else
      "$ROOT/scripts/setup.sh" "${SETUP[@]}"
    fi
    static_checks
    cd "$ROOT"
    # The suite with its slow suites (chaos with many kills, load, the built wheel); --long adds
    # the long ones, and the real small model must then be there (no skip). HICLAW_SKIP_SLOW=1
    # leaves the slow ones out (pyproject.toml's default marker expression).
    if [[ $LONG -eq 1 ]]; then
      export HICLAW_REQUIRE_REALMODEL=1 HICLAW_REQUIRE_BROWSER=1
      set -- -m "long or not long" "$@"
    elif [[ "${HICLAW_SKIP_SLOW:-0}" != "1" ]]; then
      set -- -m "not long" "$@"
    fi
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  check)
    "$ROOT/scripts/setup.sh" --test
    static_checks
    ;;
  lock)
    "$ROOT/scripts/setup.sh" --test
    cd "$ROOT"
    # Universal (every platform, Python >= 3.11), with the hash of every file, so that
    # `pip install --require-hashes` installs exactly what was tested.
    opts=(--quiet --universal --python-version 3.11 --generate-hashes --custom-compile-command "./dev.sh lock")
    "$VENV/bin/uv" pip compile "${opts[@]}" locks/build.in -o locks/build.txt "$@"
    "$VENV/bin/uv" pip compile "${opts[@]}" pyproject.toml -o locks/base.txt "$@"
    "$VENV/bin/uv" pip compile "${opts[@]}" pyproject.toml --extra test --extra dev -o locks/test.txt "$@"
    # The real small model of the slow suite, on top of locks/test.txt (same versions where they
    # overlap; installed with --no-deps, see locks/realmodel.in).
    "$VENV/bin/uv" pip compile "${opts[@]}" locks/realmodel.in -c locks/test.txt \
      --excludes locks/realmodel.exclude -o locks/realmodel.txt "$@"
    echo "[lock] locks/build.txt locks/base.txt locks/test.txt locks/realmodel.txt updated; run ./dev.sh test, then commit them" >&2
    ;;
  wheel)
    "$ROOT/scripts/setup.sh" --test
    cd "$ROOT"
    exec "$VENV/bin/python" -m build --wheel --no-isolation --outdir dist .
    ;;
  demo)
    "$ROOT/scripts/setup.sh"
    exec "$VENV/bin/hiclaw" demo "$@"
    ;;
  *)
    "$ROOT/scripts/setup.sh"
    exec "$VENV/bin/hiclaw" "$cmd" "$@"
    ;;
esac
