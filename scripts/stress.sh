#!/usr/bin/env bash
# The long reliability runs (opt-in; see docs/reliability.md): 1,000,000
# tasks with flat memory, 1,000 pools created and destroyed, 8 threads x
# 20,000 tasks with timeouts and cancellations -- both designs, under
# every CPython set up in .venv/ (run scripts/setup.sh first).  Prints the
# numbers ("[stress] ..." lines).  Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
for venv in .venv/3.*; do
    [ -x "$venv/bin/python" ] || continue
    case "$venv" in *t) continue ;; esac  # free-threaded builds: not here
    printf '[stress %s] %s (%s)\n' "$(date +%H:%M:%S)" "$venv" \
        "$("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])')" >&2
    POOLPARTY_SLOW=1 "$venv/bin/python" -m pytest -p no:cacheprovider -q -s \
        -m slow tests/python/test_reliability_stress.py "$@" || status=1
done
exit $status
