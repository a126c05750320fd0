#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run every test: the C unit tests
# (CTest, built with AddressSanitizer + UBSan) and the pytest suite
# under each CPython set up in .venv/.  Extra arguments go to pytest.
#
# The CPythons: pyenv's (3.12.1 and 3.13.0 here) and Debian 13's 3.13.5,
# default and free-threaded, found or built once by scripts/python313.sh
# (cached in .cache/; the first build of each takes 4-10 min on 2 cores).
# POOLPARTY_BUILD_PYTHONS=0 skips the 3.13.5 pair.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ "${POOLPARTY_BUILD_PYTHONS:-1}" != 0 ]; then
    gil=$(bash scripts/python313.sh --gil | tail -n 1)
    nogil=$(bash scripts/python313.sh --nogil | tail -n 1)
    export POOLPARTY_PYTHONS="${POOLPARTY_PYTHONS:-} $gil $nogil"
fi
bash scripts/setup.sh

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
