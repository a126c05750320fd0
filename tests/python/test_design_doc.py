"""docs/design.md's list of pieces names exactly the source files there are.

The list ("## The pieces") is what a newcomer reads to find their way;
it drifted before (codec.c, gil_sampler.c, dask.py and more were
missing).  Rules checked here:

- every file it names under a ``src/<dir>/`` heading exists there, and
  every other file name it mentions (``x.c``, ``x.h``, ``x.py``) exists
  somewhere under src/;
- every .c, .h and .py file directly in a directory it lists file by
  file is named (``__init__.py`` aside); a directory given one line of
  its own (``src/poolparty_bench/``) stands for its whole tree;
- every ``src/...`` path written anywhere in design.md exists.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DESIGN = ROOT / "docs" / "design.md"
SOURCE_SUFFIXES = {".c", ".h", ".py"}
NAME = re.compile(r"\b[\w]+\.(?:c|h|py)\b")


def pieces_block(text):
    """The fenced block under '## The pieces', as lines."""
    section = text.split("## The pieces", 1)[1]
    return section.split("```", 2)[1].splitlines()


def listed_files(lines):
    """({dir: {file names}} for dirs listed file by file, {whole dirs},
    {every file name mentioned})."""
    by_dir, whole, mentioned = {}, set(), set()
    current = None
    for line in lines:
        heading = re.match(r"(src/[\w/]+?)/\s", line + " ")
        if heading:
            current = heading.group(1)
            whole.add(current)
            continue
        if not line.startswith(" "):
            current = None  # tests/..., outside src/
            continue
        mentioned.update(NAME.findall(line))
        entry = re.match(r"  (\S+)", line)
        if current is not None and entry and NAME.fullmatch(entry.group(1)):
            by_dir.setdefault(current, set()).add(entry.group(1))
    return by_dir, whole - set(by_dir), mentioned


def source_files(directory):
    return {
        p.name for p in (ROOT / directory).iterdir()
        if p.is_file() and p.suffix in SOURCE_SUFFIXES and p.name != "__init__.py"
    }


def test_the_pieces_list_names_every_source_file_and_no_other():
    by_dir, whole, mentioned = listed_files(pieces_block(DESIGN.read_text()))
    assert by_dir, "no file listed under a src/ heading: has the format changed?"
    problems = []
    for directory, named in sorted(by_dir.items()):
        there = source_files(directory)
        for name in sorted(named - there):
            problems.append(f"names {directory}/{name}, which does not exist")
        for name in sorted(there - named):
            problems.append(f"misses {directory}/{name}")
    listed_dirs = set(by_dir) | whole
    for path in sorted((ROOT / "src").iterdir()):
        if path.is_dir() and f"src/{path.name}" not in listed_dirs:
            problems.append(f"misses the directory src/{path.name}/")
    every_name = {p.name for p in (ROOT / "src").rglob("*") if p.is_file()}
    for name in sorted(mentioned - every_name):
        problems.append(f"mentions {name}, which is nowhere under src/")
    assert not problems, "docs/design.md 'The pieces':\n" + "\n".join(problems)


def test_every_src_path_in_design_md_exists():
    paths = set(re.findall(r"\bsrc/[\w./-]*\w", DESIGN.read_text()))
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"docs/design.md names paths that do not exist: {missing}"
