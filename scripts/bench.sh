#!/usr/bin/env bash
# Set up (scripts/setup.sh), find or build a free-threaded CPython for the
# nogil rows (scripts/nogil-python.sh; the first build takes ~10-20 min
# and is cached in .cache/nogil), then run the pool party suite with the
# default build of the newest CPython set up.  Arguments go to
# poolparty-bench (see docs/bench.md), e.g. --bench fib --scale 1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

nogil_args=()
if nogil=$(bash scripts/nogil-python.sh | tail -1) && [ -x "$nogil" ]; then
    nogil_args=(--nogil-python "$nogil")
else
    echo "[bench] no free-threaded CPython could be found or built: the nogil rows are skipped" >&2
    nogil_args=(--no-nogil)
fi

venv=$(ls -d .venv/3.* | grep -E '/3\.[0-9]+$' | sort -V | tail -1)
exec "$venv/bin/poolparty-bench" "${nogil_args[@]}" "$@"
