#!/usr/bin/env bash
# Set up poolparty for development on this machine: one virtual
# environment per CPython >= 3.12 found, at .venv/<major.minor>, with
# poolparty built from this checkout and installed (plus test and bench
# dependencies).  Idempotent; re-run after changing the C sources.
#
# CPythons looked for: pyenv's 3.12.x/3.13.x/3.14.x (newest of each),
# /usr/bin/python3.1[2-9] (as .venv/X.Y-system when pyenv has the same
# minor), and any listed in POOLPARTY_PYTHONS (space-separated paths; as
# .venv/X.Y.Z when an earlier one has .venv/X.Y, t for free-threaded).
# Older CPythons are refused: they have no per-interpreter GIL.
#
# Environment: POOLPARTY_WERROR=ON builds with -Werror (CI does);
# POOLPARTY_SANITIZE=address,undefined builds with sanitizers.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

log() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Debian packages a fresh machine needs to build the C core (gcc and
# headers for the pyenv CPythons are already there; the system
# CPythons' headers are not).
need_apt=()
command -v gcc >/dev/null || need_apt+=(gcc)
for sys_py in /usr/bin/python3.1[2-9]; do
    [ -x "$sys_py" ] || continue
    ver=$("$sys_py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ -f "/usr/include/python$ver/Python.h" ] || need_apt+=("python$ver-dev" "python$ver-venv")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing Debian packages: ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

. scripts/pyenv-python.sh

# name<TAB>path of each CPython to set up
candidates() {
    local minor python
    for minor in 3.12 3.13 3.14; do
        python=$(pyenv_python "$minor") && printf '%s\t%s\n' "$minor" "$python"
    done
    for sys_py in /usr/bin/python3.1[2-9]; do
        [ -x "$sys_py" ] || continue
        printf '%s\t%s\n' "$("$sys_py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-system" "$sys_py"
    done
    # X.Y or X.Yt, or X.Y.Z(t) when an earlier one took X.Y(t) (pyenv's
    # 3.13.0 and a 3.13.5 built by scripts/python313.sh).
    for extra in ${POOLPARTY_PYTHONS:-}; do
        printf '%s\t%s\n' "$("$extra" -c 'import sys, sysconfig; print("%d.%d|%d" % sys.version_info[:3] + ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""))')" "$extra"
    done
}

made=()
while IFS=$'\t' read -r name python; do
    [ -x "$python" ] || continue
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
        log "skipping $python: poolparty needs CPython 3.12 or newer (per-interpreter GIL)"
        continue
    fi
    case "$name" in *"|"*)
        short=${name%%|*} micro=${name#*|}
        flag=${micro//[0-9]/}
        if [[ " ${made[*]-} " == *" $short$flag "* ]]; then name=$short.$micro; else name=$short$flag; fi ;;
    esac
    # A system CPython whose minor pyenv does not have takes the plain name.
    case "$name" in *-system)
        [ -d ".venv/${name%-system}" ] || [[ " ${made[*]-} " == *" ${name%-system} "* ]] || name=${name%-system} ;;
    esac
    venv=".venv/$name"
    if [ ! -x "$venv/bin/python" ]; then
        log "creating $venv from $python"
        "$python" -m venv "$venv"
    fi
    log "installing poolparty into $venv"
    # The bench extra is for default builds (its driver runs there; the
    # nogil rows need only the standard library, and some of its
    # dependencies have no free-threaded wheels).
    # Free-threaded builds also take only releases that have wheels: the
    # newest hypothesis, for one, would need cargo to reach crates.io.
    extras="test,bench,dask,notebook" only_binary=()
    if "$venv/bin/python" -c 'import sys, sysconfig; sys.exit(not sysconfig.get_config_var("Py_GIL_DISABLED"))'; then
        extras="test" only_binary=(--only-binary=:all:)
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${only_binary[@]}" \
        -C cmake.define.POOLPARTY_WERROR="${POOLPARTY_WERROR:-OFF}" \
        -C cmake.define.POOLPARTY_SANITIZE="${POOLPARTY_SANITIZE:-}" \
        ".[$extras]" 2>&1 | grep -v '^WARNING: Location' || true
    (cd / && "$root/$venv/bin/python" -c 'import poolparty, poolparty._poolparty') \
        || { log "FAILED: poolparty does not import in $venv"; exit 1; }
    made+=("$name")
done < <(candidates)

if [ ${#made[@]} -eq 0 ]; then
    log "no CPython >= 3.12 found: install one (e.g. pyenv install 3.13) or list it in POOLPARTY_PYTHONS"
    exit 1
fi
log "ready: ${made[*]/#/.venv/}"
