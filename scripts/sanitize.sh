#!/usr/bin/env bash
# Run poolparty under the sanitizers.  See docs/reliability.md.
#
#   scripts/sanitize.sh [asan|tsan|tsan-ext|all] [pytest arguments...]
#
# asan: for each CPython (3.13 and 3.12 by default), build poolparty with
#   AddressSanitizer + UndefinedBehaviorSanitizer (RelWithDebInfo, so the
#   stacks have lines) into its OWN virtual environment .venv-asan/X.Y and
#   build directory build/asan/, never touching .venv/ or build/cp3*/;
#   then run the whole pytest suite with libasan preloaded (the CPython
#   binary is not instrumented; the runtime must still come first) and
#   PYTHONMALLOC=malloc, so that every Python object is a malloc block
#   ASan can watch.  Sanitizer reports go to files under build/asan/logs/,
#   not stderr (tests read their subprocesses' stderr), and are summed up
#   at the end by tools/sanitizer_report.py.  Leaks are checked by a
#   separate LeakSanitizer pass over a stress workload
#   (tools/leak_workload.py), reported only when the allocating frame is
#   poolparty's own code (CPython leaks each subinterpreter by design:
#   see tools/lsan-suppressions.txt).
# tsan: the C unit tests (tests/c) built with ThreadSanitizer
#   (build/tsan), run through CTest.
# tsan-ext: the extension itself built with ThreadSanitizer into
#   .venv-tsan/3.13 (build/tsan-ext/), libtsan preloaded into the
#   (uninstrumented) CPython, running tools/leak_workload.py; races are
#   reported when a poolparty frame is on either side
#   (tools/tsan-suppressions.txt holds CPython's own).
#
# Environment: POOLPARTY_SANITIZE_PYTHONS="path/to/python3.13 ..." to pick
# the CPythons (default: pyenv's newest 3.13.x and 3.12.x).
# Exit status: non-zero if a sanitizer reported anything in poolparty's
# code, or a test failed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
what=${1:-all}
[ $# -gt 0 ] && shift
case "$what" in asan|tsan|tsan-ext|all) ;; *)
    echo "usage: $0 [asan|tsan|tsan-ext|all] [pytest args...]" >&2; exit 2 ;;
esac

log() { printf '[sanitize %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
status=0
. scripts/pyenv-python.sh

pythons() {
    if [ -n "${POOLPARTY_SANITIZE_PYTHONS:-}" ]; then
        printf '%s\n' $POOLPARTY_SANITIZE_PYTHONS
        return
    fi
    for minor in 3.13 3.12; do
        pyenv_python "$minor" || {
            [ -x "/usr/bin/python$minor" ] && echo "/usr/bin/python$minor"
        } || true
    done
}

run_asan() {
    local python=$1 minor venv logs libasan
    shift
    minor=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    venv=".venv-asan/$minor"
    logs="$root/build/asan/logs/$minor"
    libasan=$(gcc -print-file-name=libasan.so)
    [ -f "$libasan" ] || { log "no libasan.so next to gcc"; return 1; }
    # libstdc++ is preloaded too: ASan resolves its __cxa_throw
    # interceptor at start-up, and a C++ extension loaded later (the
    # bench tests import matplotlib) would otherwise abort on its first
    # throw with "CHECK failed: real___cxa_throw != 0".
    local libstdcxx
    libstdcxx=$(gcc -print-file-name=libstdc++.so.6)
    [ -f "$libstdcxx" ] && libasan="$libasan $libstdcxx"
    # tools/asan_linger.c: a 0.2 s pause at the very end of every process,
    # so that a report another thread is still writing is not cut off.
    mkdir -p "$root/build/asan"
    gcc -shared -fPIC -O2 -o "$root/build/asan/liblinger.so" tools/asan_linger.c \
        && libasan="$libasan $root/build/asan/liblinger.so"
    if [ ! -x "$venv/bin/python" ]; then
        log "creating $venv from $python"
        "$python" -m venv "$venv" || return 1
    fi
    log "building poolparty with address,undefined into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -C build-dir="build/asan/{wheel_tag}" \
        -C cmake.build-type=RelWithDebInfo \
        -C cmake.define.POOLPARTY_SANITIZE=address,undefined \
        -C cmake.define.POOLPARTY_WERROR="${POOLPARTY_WERROR:-OFF}" \
        ".[test,bench,dask]" 2>&1 | grep -v '^WARNING: Location' || true
    # The extension must really be instrumented, or the run proves nothing.
    local so
    so=$("$venv/bin/python" -c 'import importlib.util as u; print(u.find_spec("poolparty._poolparty").origin)') \
        || { log "poolparty is not installed in $venv"; return 1; }
    if ! ldd "$so" | grep libasan >/dev/null; then
        log "FAILED: $so is not linked with libasan"; return 1
    fi
    rm -rf "$logs"; mkdir -p "$logs"

    # ASan: reports to files; allocator_may_return_null so that a task's
    # bytearray(1 << 60) is a MemoryError as without ASan, not an abort;
    # leaks are left to the LSan pass below (CPython's own would drown
    # the run).  UBSan: report everything, with stacks.
    local asan_common="allocator_may_return_null=1:handle_abort=1:print_summary=1:strip_path_prefix=$root/"
    local ubsan="print_stacktrace=1:halt_on_error=0:log_path=$logs/ubsan"
    log "pytest under $venv (ASan+UBSan; reports in ${logs#$root/})"
    (cd "$root" && env LD_PRELOAD="$libasan" PYTHONMALLOC=malloc \
        ASAN_OPTIONS="detect_leaks=0:$asan_common:log_path=$logs/asan" \
        UBSAN_OPTIONS="$ubsan" \
        "$venv/bin/python" -m pytest -p no:cacheprovider -q "$@") || status=1

    log "LeakSanitizer pass under $venv (tools/leak_workload.py)"
    (cd "$root" && env LD_PRELOAD="$libasan" PYTHONMALLOC=malloc \
        ASAN_OPTIONS="detect_leaks=1:exitcode=0:$asan_common:log_path=$logs/lsan:fast_unwind_on_malloc=0:malloc_context_size=30" \
        LSAN_OPTIONS="suppressions=$root/tools/lsan-suppressions.txt:print_suppressions=0:report_objects=0" \
        UBSAN_OPTIONS="$ubsan" \
        "$venv/bin/python" tools/leak_workload.py) || { log "leak workload failed"; status=1; }

    "$venv/bin/python" tools/sanitizer_report.py "$logs" || status=1
}

run_tsan() {
    local build="$root/build/tsan"
    local tool_venv
    tool_venv=$(ls -d .venv/3.* 2>/dev/null | head -1)
    [ -n "$tool_venv" ] && export PATH="$root/$tool_venv/bin:$PATH"  # cmake, ninja
    log "C unit tests with ThreadSanitizer (${build#$root/})"
    mkdir -p "$root/build"  # a fresh clone has none: the log goes beside it
    cmake -S . -B "$build" -G Ninja -DPOOLPARTY_C_TESTS=ON \
        -DPOOLPARTY_SANITIZE=thread -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DPOOLPARTY_WERROR="${POOLPARTY_WERROR:-OFF}" >"$build.log" 2>&1 \
        && cmake --build "$build" >>"$build.log" 2>&1 \
        || { cat "$build.log"; status=1; return; }
    # halt_on_error: a race fails its test instead of scrolling by.
    (cd "$build" && TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1" \
        ctest --output-on-failure) || status=1
}

run_tsan_ext() {
    local python minor venv logs
    python=$(pythons | head -1)
    minor=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    venv=".venv-tsan/$minor"
    logs="$root/build/tsan-ext/logs/$minor"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv" || return 1
    log "building poolparty with thread into $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -C build-dir="build/tsan-ext/{wheel_tag}" \
        -C cmake.build-type=RelWithDebInfo \
        -C cmake.define.POOLPARTY_SANITIZE=thread ".[test]" 2>&1 \
        | grep -v '^WARNING: Location' || true
    rm -rf "$logs"; mkdir -p "$logs"
    log "tools/leak_workload.py under ThreadSanitizer (reports in ${logs#$root/})"
    (cd "$root" && env LD_PRELOAD="$(gcc -print-file-name=libtsan.so)" \
        TSAN_OPTIONS="log_path=$logs/tsan:second_deadlock_stack=1:suppressions=$root/tools/tsan-suppressions.txt" \
        "$venv/bin/python" tools/leak_workload.py --tasks 2000) || status=1
    "$venv/bin/python" tools/sanitizer_report.py --tsan "$logs" || status=1
}

if [ "$what" = tsan ] || [ "$what" = all ]; then
    run_tsan
fi
if [ "$what" = tsan-ext ] || [ "$what" = all ]; then
    run_tsan_ext
fi
if [ "$what" = asan ] || [ "$what" = all ]; then
    found=0
    while read -r python; do
        [ -x "$python" ] || continue
        found=1
        run_asan "$python" "$@" || status=1
    done < <(pythons)
    [ $found = 1 ] || { log "no CPython 3.12/3.13 found"; status=1; }
fi
[ $status = 0 ] && log "clean" || log "FAILED (see above)"
exit $status
