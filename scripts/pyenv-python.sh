# Sourced by the scripts that pick CPythons from pyenv.

# pyenv_python X.Y: the path of pyenv's newest CPython X.Y.z; nothing
# and status 1 when pyenv has none.
pyenv_python() {
    local v
    v=$(pyenv versions --bare 2>/dev/null | grep -E "^${1//./\\.}\.[0-9]+$" | sort -V | tail -1 || true)
    [ -n "$v" ] && echo "$(pyenv prefix "$v")/bin/python$1"
}
