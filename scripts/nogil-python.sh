#!/usr/bin/env bash
# The free-threaded CPython 3.13.5 (python3.13t): scripts/python313.sh --nogil,
# under the name the benchmark suite and its docs use.  The path is on the
# last line of stdout.
exec bash "$(dirname "${BASH_SOURCE[0]}")/python313.sh" --nogil "$@"
