#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run every test: the C unit tests
# (CTest, built with AddressSanitizer + UBSan) and the pytest suite
# under each CPython set up in .venv/.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

log() { printf '[test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Any venv's cmake/ctest will do for the C tests, which need no Python.
first_venv=$(ls -d .venv/3.* | head -1)
export PATH="$PWD/$first_venv/bin:$PATH"
log "C unit tests (CTest, ASan+UBSan)"
cmake -S . -B build/ctest -G Ninja -DPOOLPARTY_C_TESTS=ON -DPOOLPARTY_WERROR=ON \
    -DPOOLPARTY_SANITIZE=address,undefined >build/ctest.log 2>&1 \
    || { cat build/ctest.log; exit 1; }
cmake --build build/ctest >>build/ctest.log 2>&1 || { cat build/ctest.log; exit 1; }
(cd build/ctest && ctest --output-on-failure)

status=0
for venv in .venv/3.*; do
    log "pytest under $venv ($("$venv/bin/python" -c 'import sys; print(sys.version.split()[0])'))"
    "$venv/bin/python" -m pytest -p no:cacheprovider "$@" || status=1
done
exit $status
