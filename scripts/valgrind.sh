#!/usr/bin/env bash
# valgrind memcheck over a stress run (see docs/reliability.md):
#
#   scripts/valgrind.sh [--tasks N]     (default 10000 per phase)
#
# Builds poolparty without sanitizers but with debug info (RelWithDebInfo)
# into its own environment .venv-valgrind/X.Y (build/valgrind/), never
# touching .venv/, then runs tools/leak_workload.py -- by default ~45,000
# tasks through both designs (Pool map/imap/apply_async with errors,
# Executor submit/cancel/map), pools created and destroyed every way,
# Interpreter calls -- under memcheck with PYTHONMALLOC=malloc, full leak
# checking and tools/valgrind.supp.  tools/sanitizer_report.py --valgrind
# then prints every memcheck error and every definite leak that
# poolparty's own code allocated.  Exit status 1 if there is one.
#
# Environment: POOLPARTY_VALGRIND_PYTHON (default: pyenv's newest 3.13).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
log() { printf '[valgrind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
command -v valgrind >/dev/null || {
    log "installing valgrind"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
}
. scripts/pyenv-python.sh
python=${POOLPARTY_VALGRIND_PYTHON:-$(pyenv_python 3.13)}
[ -x "${python:-}" ] || { log "no CPython 3.13 found (set POOLPARTY_VALGRIND_PYTHON)"; exit 1; }
minor=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
venv=".venv-valgrind/$minor"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv" || exit 1
log "building poolparty (RelWithDebInfo) into $venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
    -C build-dir="build/valgrind/{wheel_tag}" \
    -C cmake.build-type=RelWithDebInfo ".[test]" 2>&1 | grep -v '^WARNING: Location' || true
logs="$root/build/valgrind/logs/$minor"
rm -rf "$logs"; mkdir -p "$logs"
[ $# -gt 0 ] || set -- --tasks 10000
log "memcheck: tools/leak_workload.py $* (logs in ${logs#$root/})"
PYTHONMALLOC=malloc valgrind --tool=memcheck --leak-check=full \
    --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --suppressions="$root/tools/valgrind.supp" --num-callers=40 \
    --trace-children=no --log-file="$logs/memcheck.%p" \
    "$venv/bin/python" tools/leak_workload.py "$@"
rc=$?
[ $rc = 0 ] || log "the workload itself failed (exit $rc)"
"$venv/bin/python" tools/sanitizer_report.py --valgrind "$logs" || rc=1
exit $rc
