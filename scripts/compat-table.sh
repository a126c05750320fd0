#!/usr/bin/env bash
# Make the compatibility table: which popular packages load in poolparty's
# subinterpreters.  For each CPython (pyenv's newest 3.12 and 3.13, or the
# paths in POOLPARTY_PYTHONS), a scratch venv under .cache/compat/ gets
# poolparty from this checkout and the packages of
# scripts/compat-packages.txt from PyPI (newest wheels; no source builds);
# then `poolparty.check()` tries each package's module there and writes
# docs/compat/<X.Y>.json.  Finally docs/compat.md and the README's summary
# (between its compat markers) are made from those files.
#
#   scripts/compat-table.sh            # both versions, then the docs
#   scripts/compat-table.sh --render   # only the docs, from the JSON files
#   COMPAT_REUSE=1 scripts/compat-table.sh   # keep the venvs from last time
#
# Not part of CI: it downloads about 500 MB of wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
log() { printf '[compat %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# pip's output less the index-location warnings of this machine's config;
# keeps pip's exit status.
quiet() { grep -v '^WARNING: Location' || true; }
. scripts/pyenv-python.sh

pythons() {
    if [ -n "${POOLPARTY_PYTHONS:-}" ]; then
        printf '%s\n' $POOLPARTY_PYTHONS
        return
    fi
    pyenv_python 3.12 || true
    pyenv_python 3.13 || true
}

if [ "${1:-}" != "--render" ]; then
    mapfile -t dists < <(grep -v '^#' scripts/compat-packages.txt | awk 'NF {print $2}')
    # The poolparty that is checked: this commit, and whether src/ differs.
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    git diff --quiet HEAD -- src 2>/dev/null || commit+="+changes"
    for python in $(pythons); do
        minor=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        venv=.cache/compat/venv-$minor
        log "$minor: scratch venv $venv"
        [ "${COMPAT_REUSE:-0}" = 1 ] || rm -rf "$venv"
        [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
        pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
        "${pip[@]}" . 2>&1 | quiet
        log "$minor: installing ${#dists[@]} packages from PyPI"
        if ! "${pip[@]}" --only-binary=:all: "${dists[@]}" 2>&1 | quiet; then
            # One at a time, so that a package without a wheel for this
            # CPython is left out (and shown as not installed) alone.
            for dist in "${dists[@]}"; do
                "${pip[@]}" --only-binary=:all: "$dist" 2>&1 | quiet \
                    || log "$minor: $dist not installed"
            done
        fi
        log "$minor: checking"
        (cd /tmp && POOLPARTY_COMMIT=$commit "$root/$venv/bin/python" \
            "$root/scripts/compat_table.py" probe "$root/scripts/compat-packages.txt" \
            "$root/docs/compat/$minor.json")
    done
fi
log "rendering docs/compat.md and the README summary"
python=$(pythons | tail -1)
"$python" scripts/compat_table.py render docs/compat.md README.md docs/compat/3.*.json
