"""The compatibility table's two steps (run by scripts/compat-table.sh).

probe LIST OUT.json
    In a scratch venv with the packages installed: how each package is
    built (read from its installed extension modules) and what
    ``poolparty.check()`` says about its module; written to OUT.json.
render COMPAT.md README.md X.Y.json ...
    docs/compat.md from the probes' files, and the README's summary
    between its ``<!-- compat:begin -->`` / ``<!-- compat:end -->`` lines.
    Needs only the standard library.
"""

import json
import os
import platform
import sys

# Markers in an extension module's bytes, and what they say built it
# (the first that matches).
BUILD_MARKERS = [
    (b"pyo3", "Rust (PyO3)"),
    (b"rustc version", "Rust"),  # pyo3-ffi alone (orjson)
    (b"__pyx_", "Cython"),
    (b"CPyStatic", "mypyc"),
    (b"pybind11", "C++ (pybind11)"),
    (b"nanobind", "C++ (nanobind)"),
    (b"_cffi_backend", "cffi"),
]


def read_list(path):
    """[(area, distribution, module, first_use)] from
    scripts/compat-packages.txt."""
    rows = []
    with open(path) as listing:
        for line in listing:
            if line.startswith("#") or not line.strip():
                continue
            names, _, first_use = line.partition(" | ")
            rows.append((*names.split(), first_use.strip()))
    return rows


# Run as `python -c FIRST_USE MODULE STATEMENTS` in a process of its own
# (a crash costs only that process): the statements in a fresh
# poolparty.Interpreter and, if they fail there, in the main interpreter
# (where they must work, or the statements are wrong).
FIRST_USE = r"""
import json, sys
from poolparty import Interpreter
module, statements = sys.argv[1:3]
source = f"import {module}\n{statements}\n"
def why(exc):
    lines = str(exc).strip().splitlines()
    return (type(exc).__name__ + (": " + lines[0] if lines else ""))[:300]
outcome = {"sub": None, "main": None}
with Interpreter() as interp:
    try:
        interp.exec(source)
    except Exception as exc:
        outcome["sub"] = why(exc)
if outcome["sub"] is not None:
    try:
        exec(source, {})
    except Exception as exc:
        outcome["main"] = why(exc)
print(json.dumps(outcome))
"""


def first_use(module, statements):
    """{"ok", "reason"}: whether ``statements`` run after importing
    ``module`` in a fresh pool subinterpreter."""
    import subprocess

    env = dict(os.environ, LIBC_FATAL_STDERR_="1")  # see poolparty._check
    try:
        proc = subprocess.run(
            [sys.executable, "-c", FIRST_USE, module, statements],
            capture_output=True, text=True, timeout=120, cwd="/", env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "reason": "hung (no answer in 120 s)",
                "at_exit": None}
    from poolparty._check import _death

    lines = proc.stdout.splitlines()
    if not lines:  # died before it could say anything
        return {"ok": False, "at_exit": None, "reason": "the process was "
                f"{_death(proc.returncode, proc.stderr)}"}
    outcome = json.loads(lines[-1])
    if outcome["sub"] is not None and outcome["main"] is not None:
        raise RuntimeError(f"the first use of {module} in "
                           "scripts/compat-packages.txt fails in the main "
                           f"interpreter too: {outcome['main']}")
    # It ran, then the process died at exit (CPython 3.12.1).
    at_exit = (f"the process was {_death(proc.returncode, proc.stderr)} at "
               "exit" if proc.returncode else None)
    return {"ok": outcome["sub"] is None, "reason": outcome["sub"],
            "at_exit": at_exit}


def _is_extension(relative):
    name = os.path.basename(str(relative))
    return name.endswith(".so") and (".cpython-" in name or ".abi3." in name
                                     or name.count(".") == 1)


def built_with(dist):
    """How a distribution's own extension modules were made, or
    "pure Python" when it has none."""
    kinds = []
    for relative in dist.files or ():
        parts = str(relative).split("/")
        if any(part.endswith(".libs") for part in parts[:-1]):
            continue  # vendored shared libraries (auditwheel's NAME.libs)
        if not _is_extension(relative):
            continue
        with open(dist.locate_file(relative), "rb") as binary:
            data = binary.read()
        kind = "C/C++"
        if not parts[-1].startswith("_cffi_backend"):  # cffi itself
            for marker, name in BUILD_MARKERS:
                if marker in data:
                    kind = name
                    break
        if kind not in kinds:
            kinds.append(kind)
    return ", ".join(sorted(kinds)) if kinds else "pure Python"


def probe(list_path, out_path):
    from importlib import metadata

    import poolparty

    rows = read_list(list_path)
    packages = []
    for area, dist_name, module, statements in rows:
        entry = {"area": area, "distribution": dist_name, "module": module,
                 "first_use": statements}
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            entry.update(version=None, built_with=None)
        else:
            entry.update(version=dist.version, built_with=built_with(dist))
        packages.append(entry)
    modules = [p["module"] for p in packages if p["version"] is not None]

    def progress(index, total, name):
        print(f"[{index}/{total}] {name}", file=sys.stderr, flush=True)

    results = poolparty.check(modules, progress=progress)
    by_module = {result.module: result.to_dict() for result in results}
    for entry in packages:
        result = entry["result"] = by_module.get(entry["module"])
        entry["use"] = None
        if result is not None and result["status"] == "loads":
            print(f"first use of {entry['module']}", file=sys.stderr)
            entry["use"] = first_use(entry["module"], entry["first_use"])
    report = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "poolparty_commit": os.environ.get("POOLPARTY_COMMIT", "unknown"),
        "packages": packages,
    }
    with open(out_path, "w") as out:
        json.dump(report, out, indent=1)
        out.write("\n")


# ---- render ----------------------------------------------------------------

BEGIN, END = "<!-- compat:begin -->", "<!-- compat:end -->"


def _top(name):
    return name.partition(".")[0] if name else name


def _fallbacks(result):
    """The extension modules outside the standard library that refused
    (3.12's stdlib fallbacks, _datetime and _decimal, are everyone's)."""
    names = [f.partition(":")[0] for f in result["fallbacks"]]
    return [n for n in names if _top(n) not in sys.stdlib_module_names]


def culprits(entry):
    """The extension modules a refused package's import stumbled on."""
    result = entry["result"]
    if result["culprit"]:
        return [result["culprit"]]
    return [f.partition(":")[0] for f in result["fallbacks"]]


def classify(entry):
    """One word for a package's result: loads, fallback, own, dependency,
    feature, other, missing."""
    result = entry["result"]
    if result is None:
        return "missing"
    if result["status"] == "loads":
        if not entry["use"]["ok"]:
            return "unusable"
        if result["at_exit"] or entry["use"]["at_exit"]:
            return "exit"
        return "fallback" if _fallbacks(result) else "loads"
    if result["status"] == "refused" and result["kind"] == "extension":
        own = any(_top(c) == _top(entry["module"]) for c in culprits(entry))
        return "own" if own else "dependency"
    if result["status"] == "refused" and result["kind"] == "feature":
        return "feature"
    return "other"


def _by_dist(report):
    return {p["distribution"]: p for p in report["packages"]}


# What a table cell says for each of classify()'s words.
_CELL_TEXT = {
    "missing": "not installed",
    "loads": "works",
    "fallback": "works, without C parts",
    "unusable": "**imports, fails in use**",
    "exit": "**works, then the process crashes at exit**",
    "own": "**refused**",
    "feature": "**refused** (threads/fork/signals)",
}


def _cell(entry):
    word = classify(entry)
    if word == "dependency":
        needs = ", ".join(dict.fromkeys(_top(c) for c in culprits(entry)))
        return f"**refused** (needs {needs})"
    if word in _CELL_TEXT:
        return _CELL_TEXT[word]
    return f"**{entry['result']['status']}**"


def _why(entry):
    result = entry["result"]
    if result is None:
        return "no wheel for this CPython"
    if result["status"] == "loads":
        if not entry["use"]["ok"]:
            return (f"`{entry['first_use']}`: {entry['use']['reason']}"
                    + "".join(f" (after `{name}` refused to load)"
                              for name in _fallbacks(result)[:1]))
        at_exit = result["at_exit"] or entry["use"]["at_exit"]
        if at_exit:
            return (f"`{entry['first_use']}`: {at_exit}"
                    if not result["at_exit"] else f"import: {at_exit}")
        if _fallbacks(result):
            return "goes on without " + ", ".join(
                f"`{name}`" for name in _fallbacks(result))
        return ""
    reason = result["reason"]
    if reason.startswith("needs "):  # the culprit is its own column's
        reason = reason.partition(": ")[2]
    return reason


def _md(text):
    return text.replace("|", "\\|")


def _joined(values):
    values = list(dict.fromkeys(v for v in values if v))
    return " / ".join(values) if values else ""


def _names(reports, dists, word, newest=True):
    """The packages whose result is ``word`` on the newest (or every)
    CPython, as a sorted comma-separated list."""
    chosen = [reports[-1]] if newest else reports
    return sorted(d for d in dists
                  if all(classify(_by_dist(r)[d]) == word for r in chosen))


WORKS = ("loads", "fallback")


def _built_kinds(reports):
    kinds = set()
    for report in reports:
        for entry in report["packages"]:
            kinds.update((entry["built_with"] or "").split(", "))
    kinds.discard("")
    return sorted(kinds, key=lambda k: (k == "pure Python", k))


def render(compat_path, readme_path, report_paths):
    reports = []
    for path in report_paths:
        with open(path) as report:
            reports.append(json.load(report))
    reports.sort(key=lambda r: tuple(map(int, r["python"].split("."))))
    pythons = [r["python"] for r in reports]
    dists = [p["distribution"] for p in reports[-1]["packages"]]
    lines = [
        "# Which popular packages work in poolparty's subinterpreters",
        "",
        "Made by `scripts/compat-table.sh`: for each CPython, a scratch venv "
        "with poolparty and the packages of `scripts/compat-packages.txt` "
        "installed from PyPI (the newest wheels for that CPython); then "
        "`poolparty.check()` imports the module named for each in a fresh "
        "isolated own-GIL subinterpreter, as a pool's workers are, and "
        "for each that imports, a first use (the statements in "
        "`compat-packages.txt`, which must also work in the main "
        "interpreter) runs in another fresh one: some packages import and "
        "fail only when their extension module is first needed. "
        "\"built with\" is read from the installed extension modules "
        "(PyO3, Rust, Cython, pybind11 and cffi leave their marks in "
        "them). The JSON behind this page is in [compat/](compat/).",
        "",
        "Python: " + ", ".join(
            f"{r['python']} ({r['platform']}, poolparty at "
            f"{r['poolparty_commit']})" for r in reports) + ".",
        "",
    ]
    header = ["area", "package", "version", "built with", "module"] + [
        f"CPython {p}" for p in pythons] + ["why"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for dist in dists:
        entries = [_by_dist(r)[dist] for r in reports]
        first = entries[-1]
        whys = [_why(e) for e in entries]
        if len(set(whys)) > 1:
            why = "; ".join(f"{p}: {w}" for p, w in zip(pythons, whys) if w)
        else:
            why = whys[0]
        row = [first["area"], dist,
               _joined(e["version"] for e in entries),
               _joined(e["built_with"] for e in entries),
               f"`{first['module']}`"] + [_cell(e) for e in entries] + [
                   _md(why)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "## What you can do", ""]
    lines += _advice(reports, dists)
    with open(compat_path, "w") as out:
        out.write("\n".join(lines).rstrip() + "\n")
    _update_readme(readme_path, _summary(reports, dists))


WAYS_OUT = (
    "Keep the calls that need it in the main interpreter and give the pool "
    "the pure-Python work around them, with plain data in and out; under "
    "Dask, route the tasks that need it to threads and the rest to "
    "subinterpreters with annotations "
    "(`SubinterpreterWorkerPlugin(default=False)` and "
    "`dask.annotate(executor=\"subinterpreters\")`, see [dask.md](dask.md)); "
    "or run those tasks in processes "
    "(`concurrent.futures.ProcessPoolExecutor`, `multiprocessing.Pool`).")

ADVICE = [
    ("own", "Refused: the package's own extension module",
     "Its extension module is single-phase init or does not declare "
     "per-interpreter GIL support (PyO3 refuses every subinterpreter; "
     "Cython modules refuse a second interpreter unless built to allow "
     "it). Nothing in poolparty can load it. " + WAYS_OUT),
    ("dependency", "Refused: through a dependency",
     "Pure Python or loadable itself, but it imports a refused module at "
     "import time (numpy, pydantic-core; on CPython 3.12, the standard "
     "library's `_datetime` and `_decimal`: `zoneinfo` needs the datetime "
     "C API). The same ways out: " + WAYS_OUT),
    ("unusable", "Imports, fails when used",
     "The import catches the refusal of its extension module and goes on, "
     "but the first real use fails. Treat it as refused: " + WAYS_OUT),
    ("fallback", "Works, without some of its C parts",
     "An extension module (a C accelerator, perhaps a dependency's) "
     "refused to load and the package went on without it, in pure Python: "
     "it works in a pool (its first use passed), but slower than in the "
     "main interpreter. If that speed matters: " + WAYS_OUT),
    ("exit", "Works, then the process crashes at exit",
     "CPython 3.12.1 aborts at exit (\"munmap_chunk(): invalid "
     "pointer\", \"free(): invalid pointer\") after an isolated "
     "subinterpreter was the first in the process to call some C "
     "functions with keyword arguments: `base64.b64encode()` calls "
     "`binascii.b2a_base64(data, newline=False)`, and that is enough. "
     "poolparty has the main interpreter import each module first, which "
     "avoids the same crash after imports, but not after such calls. Use "
     "CPython 3.13, or make the same call once in the main interpreter "
     "before the pool does (that avoids it)."),
    ("feature", "Refused: threads, fork or signals at import",
     "The package starts a daemon thread, forks or sets a signal handler "
     "when imported, which isolated subinterpreters refuse: keep it in the "
     "main interpreter or use processes."),
    ("other", "Errors, crashes and hangs", "See the why column."),
]


def _advice(reports, dists):
    lines = []
    for word, title, text in ADVICE:
        per_version = [(r["python"], sorted(
            d for d in dists if classify(_by_dist(r)[d]) == word))
            for r in reports]
        if not any(names for _, names in per_version):
            continue
        lines += [f"### {title}", "", text, ""]
        for python, names in per_version:
            lines.append(f"- CPython {python}: "
                         + (", ".join(names) if names else "none") + ".")
        lines.append("")
    oldest, newest = reports[0], reports[-1]
    only_new = _only_newest(reports, dists)
    if only_new:
        lines += [
            f"### Works on CPython {newest['python']}, not on "
            f"{oldest['python']}", "",
            f"{', '.join(only_new)}: CPython 3.12 refuses `_datetime`, "
            "`_decimal`, `_ctypes` and `pyexpat` in isolated "
            "subinterpreters (`datetime` and `decimal` fall back to pure "
            "Python, which `zoneinfo` and some packages cannot use), and "
            "3.12.1 crashes at exit after some calls (above); 3.13 does "
            "neither. Use CPython 3.13.", ""]
    return lines


def _only_newest(reports, dists):
    return sorted(d for d in dists
                  if classify(_by_dist(reports[0])[d]) not in WORKS
                  and classify(_by_dist(reports[-1])[d]) in WORKS)


def _summary(reports, dists):
    newest, oldest = reports[-1], reports[0]
    counts = []
    for report in reports:
        words = [classify(p) for p in report["packages"]]
        works, fallback = words.count("loads"), words.count("fallback")
        counts.append(
            f"on CPython {report['python']}, {works} work, {fallback} work "
            f"without some of their C parts (slower), and "
            f"{len(words) - works - fallback} do not")
    dependency = {}
    for d in _names(reports, dists, "dependency"):
        needs = ", ".join(dict.fromkeys(
            _top(c) for c in culprits(_by_dist(newest)[d])))
        dependency.setdefault(needs, []).append(d)
    kinds = ", ".join(_built_kinds(reports))
    counted = "; ".join(counts)
    lines = [
        f"`scripts/compat-table.sh` checked {len(dists)} popular packages, "
        "installed from PyPI into scratch venvs (numeric, data, text, web, "
        f"crypto, imaging, parsing; built with {kinds}): each imported with "
        "`poolparty.check()`, then used once in a fresh subinterpreter. "
        + counted[0].upper() + counted[1:] + ". The table, with versions, "
        "how each is built, "
        "why each fails and what to do: [docs/compat.md](docs/compat.md).",
        "",
        f"On CPython {newest['python']}:",
        "",
        "- **Work**: " + ", ".join(_names(reports, dists, "loads")) + ".",
        "- **Work without some of their C parts** (slower): "
        + ", ".join(_names(reports, dists, "fallback")) + ".",
        "- **Refused** (their own extension module): "
        + ", ".join(_names(reports, dists, "own")) + ".",
        "- **Refused through a dependency**: " + "; ".join(
            f"{', '.join(names)} (need {needs})"
            for needs, names in sorted(dependency.items())) + ".",
    ]
    unusable = _names(reports, dists, "unusable")
    if unusable:
        lines.append("- **Import, then fail when used**: "
                     + ", ".join(unusable) + ".")
    only_new = _only_newest(reports, dists)
    if only_new:
        lines.append(f"- **Work on {newest['python']} but not on "
                     f"{oldest['python']}**: " + ", ".join(only_new) + ".")
    lines += [
        "",
        "For the others: keep the calls that need them in the main "
        "interpreter and give the pool the pure-Python work; under Dask, "
        "route tasks with annotations ([docs/dask.md](docs/dask.md)); or "
        "use processes for those tasks.",
    ]
    return lines


def _wrapped(lines, width=76):
    """The summary's paragraphs and list items, wrapped as the README is."""
    import textwrap

    out = []
    for line in lines:
        indent = "  " if line.startswith("- ") else ""
        out.append(textwrap.fill(line, width, subsequent_indent=indent,
                                 break_on_hyphens=False,
                                 break_long_words=False) if line else "")
    return out


def _update_readme(path, summary):
    summary = _wrapped(summary)
    with open(path) as readme:
        text = readme.read()
    start, end = text.index(BEGIN), text.index(END)
    text = (text[:start + len(BEGIN)] + "\n" + "\n".join(summary) + "\n"
            + text[end:])
    with open(path, "w") as readme:
        readme.write(text)


def main(argv):
    if argv[:1] == ["probe"] and len(argv) == 3:
        probe(argv[1], argv[2])
    elif argv[:1] == ["render"] and len(argv) >= 4:
        render(argv[1], argv[2], argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
