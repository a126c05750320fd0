#!/usr/bin/env bash
# Find or build CPython 3.13.5 from Debian 13's python3.13 source: the
# free-threaded ("nogil") interpreter for the benchmark suite and the test
# matrix, or the default (GIL) one for the test matrix.
#
#   scripts/python313.sh --nogil   # python3.13t  (scripts/nogil-python.sh)
#   scripts/python313.sh --gil     # python3.13, GIL enabled
#
# The absolute path of the interpreter goes on the LAST line of stdout; every
# progress message (and the output of apt, configure, make) goes to stderr or
# to a log file, so callers can do:  PY=$(scripts/python313.sh --gil | tail -n 1)
#
# Where the interpreter comes from, first match wins:
#   1. $POOLPARTY_NOGIL_PYTHON (--nogil) or $POOLPARTY_GIL_PYTHON (--gil),
#      when it passes the checks below.
#   2. On Debian 13 (trixie), --nogil only: /usr/bin/python3.13t from the apt
#      package python3.13-nogil, when apt offers it.  (Debian 13 itself does
#      not build that package from its python3.13 source; Ubuntu does.
#      Without it the script goes on to 3 and 4.)  --gil does not look for
#      Debian's own python3.13: scripts/setup.sh already sets that one up.
#   3. The cache <cache>/nogil/install/bin/python3.13t or
#      <cache>/gil/install/bin/python3.13, where <cache> is the .cache folder
#      of the main checkout, shared by its git worktrees.  (An installed
#      /usr/bin/python3.13t is taken before it, but apt is asked only after
#      it, so that a second run is instant.)
#   4. A build of trixie's python3.13 source into that cache (once, 4-10 min
#      on 2 cores).  The source comes from Debian with `apt-get source` (or
#      from the other variant's cache, when it has it); a deb-src entry for
#      trixie is added under /etc/apt/sources.list.d/ when apt knows no
#      python3.13 source.  The tree is the upstream tarball plus
#      Debian's *.patch files (upstream security and bug fixes).  Debian's
#      *.diff files are left out: they turn the interpreter into a Debian
#      system Python (ensurepip refuses to run, packages go to
#      <prefix>/local/.../dist-packages, multiarch paths), which breaks
#      `--with-ensurepip=install` and a self-contained prefix.
#
# Every candidate must pass: a 3.13 of the asked kind (Py_GIL_DISABLED == 1
# and the GIL off at run time for --nogil; Py_GIL_DISABLED unset for --gil),
# `-m pip --version`, and importing ssl, sqlite3, ctypes, decimal, json,
# pickle, concurrent.futures and multiprocessing.
#
# Needs root (or sudo) only for apt, i.e. only when it has to build.
set -Eeuo pipefail

# stdout is kept for the final path alone; everything else goes to stderr.
exec 3>&1 1>&2

case ${1:-} in
--nogil) VARIANT=nogil OTHER=gil EXE=python3.13t ENV_NAME=POOLPARTY_NOGIL_PYTHON ;;
--gil) VARIANT=gil OTHER=nogil EXE=python3.13 ENV_NAME=POOLPARTY_GIL_PYTHON ;;
*)
    printf 'usage: %s --gil|--nogil\n' "$0" >&2
    exit 2
    ;;
esac

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
# One cache for the main checkout and its worktrees (git's common dir is
# the main checkout's .git), so that each worktree does not build again.
CACHE_ROOT="$REPO_ROOT/.cache"
if common=$(git -C "$REPO_ROOT" rev-parse --path-format=absolute --git-common-dir 2>/dev/null) &&
    [[ $(basename "$common") == .git ]]; then
    CACHE_ROOT="$(dirname "$common")/.cache"
fi
CACHE_DIR="$CACHE_ROOT/$VARIANT"
PREFIX="$CACHE_DIR/install"
CACHED_PY="$PREFIX/bin/$EXE"
SRC_DIR="$CACHE_DIR/src"
BUILD_LOG="$CACHE_DIR/build.log"
TRIXIE_SOURCES=/etc/apt/sources.list.d/poolparty-trixie-src.sources
DEBIAN_MIRROR=http://deb.debian.org/debian

# Settings of the caller's shell that would change what the checks see.
unset PYTHONHOME PYTHONPATH PYTHONSTARTUP PYTHON_GIL

log() { printf '[python313 %s %s] %s\n' "$VARIANT" "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

trap 'log "ERROR: unexpected failure (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

emit() {
    log "using $1"
    printf '%s\n' "$1" >&3
    exit 0
}

# ---------------------------------------------------------------- checks ----
if [[ $VARIANT == nogil ]]; then
    CHECK_KIND='
import sys, sysconfig
assert sys.version_info[:2] == (3, 13), "not a 3.13"
assert sysconfig.get_config_var("Py_GIL_DISABLED") == 1, "not a free-threaded build (Py_GIL_DISABLED != 1)"
assert not sys._is_gil_enabled(), "the GIL is enabled at run time"
'
else
    CHECK_KIND='
import sys, sysconfig
assert sys.version_info[:2] == (3, 13), "not a 3.13"
assert not sysconfig.get_config_var("Py_GIL_DISABLED"), "a free-threaded build (Py_GIL_DISABLED == 1)"
'
fi
CHECK_MODULES='import ssl, sqlite3, ctypes, decimal, json, pickle, concurrent.futures, multiprocessing'

# usable_python PATH: true when PATH is a 3.13 of the asked kind with pip and
# the stdlib modules the suite needs; says on stderr what is wrong otherwise.
usable_python() {
    local py=$1 out
    if [[ ! -x $py ]]; then
        log "$py: not an executable file"
        return 1
    fi
    if ! out=$("$py" -c "$CHECK_KIND" 2>&1); then
        log "$py: ${out##*$'\n'}"
        return 1
    fi
    if ! out=$("$py" -c "$CHECK_MODULES" 2>&1); then
        log "$py: stdlib module missing: ${out##*$'\n'}"
        return 1
    fi
    if ! out=$("$py" -m pip --version 2>&1); then
        log "$py: pip does not work: ${out##*$'\n'}"
        return 1
    fi
    return 0
}

# ------------------------------------------------------------ apt helpers ----
SUDO=()
need_root() {
    command -v apt-get >/dev/null 2>&1 ||
        die "apt-get not found: building the interpreter needs a Debian machine (or set POOLPARTY_NOGIL_PYTHON)"
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 ||
            die "must run as root (or with sudo available) to install packages with apt-get"
        SUDO=(sudo)
    fi
}

apt_get() {
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -q -o DPkg::Lock::Timeout=600 "$@"
}

APT_UPDATED=0
apt_update() {
    if ((APT_UPDATED == 0)) || [[ ${1:-} == force ]]; then
        log "apt-get update"
        apt_get update || die "apt-get update failed"
        APT_UPDATED=1
    fi
}

is_debian13() {
    local v=""
    [[ -r /etc/debian_version ]] && v=$(</etc/debian_version)
    [[ $v == 13* || $v == trixie* ]] && return 0
    [[ -r /etc/os-release ]] && grep -qx 'VERSION_CODENAME=trixie' /etc/os-release
}

# apt_has_candidate PKG: true when apt could install PKG.
apt_has_candidate() {
    local cand
    cand=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [[ -n $cand && $cand != "(none)" ]]
}

# ----------------------------------------------------- 1. the environment ----
if [[ -n ${!ENV_NAME:-} ]]; then
    py=${!ENV_NAME}
    if [[ $py != */* ]]; then
        py=$(command -v "$py" || true)
        [[ -n $py ]] || py=${!ENV_NAME}
    fi
    if usable_python "$py"; then
        [[ $py == /* ]] || py="$(cd "$(dirname "$py")" && pwd -P)/$(basename "$py")"
        emit "$py"
    fi
    log "$ENV_NAME=${!ENV_NAME} is not usable; looking elsewhere"
fi

# ------------------------------------------- 2. Debian 13's package, 3. cache ----
# An installed python3.13-nogil comes first, then the cache; apt is only asked
# (which means an `apt-get update`) when neither is there, so that a run after
# the first one is instant.
if [[ $VARIANT == nogil ]] && is_debian13 && [[ -x /usr/bin/python3.13t ]] &&
    usable_python /usr/bin/python3.13t; then
    emit /usr/bin/python3.13t
fi
if [[ -e $CACHED_PY ]] && usable_python "$CACHED_PY"; then
    emit "$CACHED_PY"
fi
if [[ $VARIANT == nogil ]] && is_debian13; then
    need_root
    apt_update
    if apt_has_candidate python3.13-nogil; then
        log "Debian 13: apt-get install python3.13-nogil"
        pkgs=(python3.13-nogil)
        apt_has_candidate python3-pip && pkgs+=(python3-pip)
        if apt_get install -y --no-install-recommends "${pkgs[@]}" &&
            usable_python /usr/bin/python3.13t; then
            emit /usr/bin/python3.13t
        fi
        log "the apt package did not give a usable /usr/bin/python3.13t; building from source instead"
    else
        log "Debian 13: apt offers no python3.13-nogil package; building from source instead"
    fi
fi

# ------------------------------------------------------------- 4. build ----
mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.lock"
if ! flock -n 9; then
    log "another run is building in $CACHE_DIR; waiting for it"
    flock 9
    if [[ -e $CACHED_PY ]] && usable_python "$CACHED_PY"; then
        emit "$CACHED_PY"
    fi
fi

BUILD_START=$SECONDS
log "no usable $VARIANT Python 3.13 found; building one into $PREFIX (about 4-10 min)"
need_root

# Background jobs started by run_logged are stopped if this script is.
CHILD_PID=""
trap '[[ -n $CHILD_PID ]] && kill "$CHILD_PID" 2>/dev/null; exit 130' INT TERM

# run_logged STEP CMD...: run CMD with its output in $BUILD_LOG, saying every
# 30 s on stderr how far it got; stop with the log's tail if it fails.
run_logged() {
    local step=$1 start=$SECONDS last=$SECONDS rc=0
    shift
    log "$step: started (output in $BUILD_LOG)"
    printf '\n===== %s  %s: %s\n' "$(date '+%F %T')" "$step" "$*" >>"$BUILD_LOG"
    "$@" >>"$BUILD_LOG" 2>&1 </dev/null &
    CHILD_PID=$!
    while kill -0 "$CHILD_PID" 2>/dev/null; do
        sleep 2
        if ((SECONDS - last >= 30)); then
            last=$SECONDS
            log "$step: running for $((SECONDS - start)) s, build.log has $(wc -l <"$BUILD_LOG") lines"
        fi
    done
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    if ((rc != 0)); then
        log "$step failed (exit $rc); last lines of $BUILD_LOG:"
        tail -n 40 "$BUILD_LOG" >&2
        die "$step failed; see $BUILD_LOG"
    fi
    log "$step: done in $((SECONDS - start)) s"
}

# 4a. Build dependencies, from the machine's own suite.  (apt-get build-dep
# of trixie's python3.13 does not resolve on bookworm, so list them here.)
BUILD_DEPS=(
    build-essential dpkg-dev pkg-config xz-utils patch debian-archive-keyring
    libssl-dev zlib1g-dev libffi-dev libbz2-dev liblzma-dev libsqlite3-dev
    libreadline-dev uuid-dev libgdbm-dev libgdbm-compat-dev libncurses-dev
    libexpat1-dev
)
# mpdecimal for _decimal: Debian 13 packages it, Debian 12 does not, and then
# CPython's bundled copy is used.  When everything is installed already (the
# other variant was built here), apt is not asked at all.
SYSTEM_LIBMPDEC=no
missing=()
for pkg in "${BUILD_DEPS[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if dpkg -s libmpdec-dev >/dev/null 2>&1; then
    SYSTEM_LIBMPDEC=yes
elif ((${#missing[@]} > 0)); then
    apt_update
    if apt_has_candidate libmpdec-dev; then
        missing+=(libmpdec-dev)
        SYSTEM_LIBMPDEC=yes
    fi
fi
if ((${#missing[@]} > 0)); then
    apt_update
    log "installing build dependencies: ${missing[*]}"
    apt_get install -y --no-install-recommends "${missing[@]}" ||
        die "could not install the build dependencies with apt-get"
fi

# 4b. The source package: the other variant's download when it has one,
# else from apt, with a deb-src entry for trixie added if apt knows no
# python3.13 source.
has_py313_source() {
    apt-cache showsrc python3.13 2>/dev/null | grep -q '^Package: python3\.13$'
}
download_source() {
    apt_update
    if ! has_py313_source; then
        log "adding deb-src for Debian 13 (trixie) in $TRIXIE_SOURCES"
        "${SUDO[@]}" tee "$TRIXIE_SOURCES" >/dev/null <<EOF
# Added by poolparty's scripts/python313.sh: source packages only (no
# binaries), to build CPython 3.13 from Debian's python3.13.
Types: deb-src
URIs: $DEBIAN_MIRROR
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        apt_update force
        has_py313_source ||
            die "apt still knows no python3.13 source package after adding $TRIXIE_SOURCES"
    fi
    log "apt-get source --download-only python3.13 into $SRC_DIR"
    (cd "$SRC_DIR" && apt_get source --download-only python3.13) ||
        die "apt-get source python3.13 failed"
}

# 4c. Lay out the tree.
rm -rf "$SRC_DIR" "$PREFIX"
mkdir -p "$SRC_DIR"
: >"$BUILD_LOG"
OTHER_SRC="$CACHE_ROOT/$OTHER/src"
shopt -s nullglob
other=("$OTHER_SRC"/python3.13_*.orig.tar.xz "$OTHER_SRC"/python3.13_*.debian.tar.xz)
shopt -u nullglob
if ((${#other[@]} == 2)); then
    log "using the source downloaded for --$OTHER (${other[*]##*/})"
    cp "${other[@]}" "$SRC_DIR/"
else
    download_source
fi

shopt -s nullglob
origs=("$SRC_DIR"/python3.13_*.orig.tar.xz)
debs=("$SRC_DIR"/python3.13_*.debian.tar.xz)
shopt -u nullglob
((${#origs[@]} == 1)) || die "expected one python3.13_*.orig.tar.xz in $SRC_DIR, found ${#origs[@]}"
((${#debs[@]} == 1)) || die "expected one python3.13_*.debian.tar.xz in $SRC_DIR, found ${#debs[@]}"
DEB_VERSION=${debs[0]##*/python3.13_}
DEB_VERSION=${DEB_VERSION%.debian.tar.xz}

# (head closes the pipe early: tar's SIGPIPE is not a failure here.)
tree_top=$(tar -tJf "${origs[0]}" | head -n 1) || true
tree_top=${tree_top%%/*}
[[ -n $tree_top ]] || die "cannot read ${origs[0]}"
TREE="$SRC_DIR/$tree_top"

unpack_upstream() {
    rm -rf "$TREE"
    tar -xJf "${origs[0]}" -C "$SRC_DIR" || die "cannot unpack ${origs[0]}"
}

log "unpacking ${origs[0]##*/} and Debian's patches (${debs[0]##*/})"
unpack_upstream
mkdir -p "$SRC_DIR/debian-pkg"
tar -xJf "${debs[0]}" -C "$SRC_DIR/debian-pkg" || die "cannot unpack ${debs[0]}"

PATCH_DIR="$SRC_DIR/debian-pkg/debian/patches"
applied=0
patches=()
if [[ -r $PATCH_DIR/series ]]; then
    while read -r name _; do
        [[ $name == *.patch ]] && patches+=("$name")
    done < <(grep -v '^[[:space:]]*#' "$PATCH_DIR/series")
fi
for name in "${patches[@]}"; do
    if patch -d "$TREE" -p1 --batch --forward --fuzz=0 -s <"$PATCH_DIR/$name" >>"$BUILD_LOG" 2>&1; then
        applied=$((applied + 1))
    else
        log "WARNING: Debian patch $name does not apply; building the pristine upstream tarball instead"
        unpack_upstream
        applied=0
        break
    fi
done
log "applied $applied of Debian's upstream-fix patches (*.patch); Debian's layout patches (*.diff) are not used"

# 4d. configure, make, make install.
CONFIGURE_ARGS=(
    --prefix="$PREFIX"
    --with-ensurepip=install
    --with-system-expat
    --with-system-libmpdec="$SYSTEM_LIBMPDEC"
    --disable-test-modules
)
if [[ $VARIANT == nogil ]]; then
    CONFIGURE_ARGS+=(--disable-gil)
fi
JOBS=$(nproc 2>/dev/null || echo 2)
run_logged "configure" env -C "$TREE" ./configure "${CONFIGURE_ARGS[@]}"
run_logged "make -j$JOBS" make -C "$TREE" -j"$JOBS"
run_logged "make install" make -C "$TREE" install

[[ -x $CACHED_PY ]] || die "make install did not create $CACHED_PY"
usable_python "$CACHED_PY" || die "the new interpreter $CACHED_PY fails the checks above"

cat >"$CACHE_DIR/BUILD-INFO" <<EOF
source: Debian python3.13 $DEB_VERSION (upstream ${origs[0]##*/} + $applied Debian *.patch files)
configure: ${CONFIGURE_ARGS[*]}
built: $(date '+%F %T %z') in $((SECONDS - BUILD_START)) s
EOF
log "built $CACHED_PY in $((SECONDS - BUILD_START)) s"
emit "$CACHED_PY"
