"""docs/compat.md and the README's summary are what scripts/compat_table.py
makes from the committed probes (docs/compat/*.json); how a package is
built is read from its files.  CI installs none of the packages."""

import glob
import importlib.util
import os
import shutil
import subprocess
import sys
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "compat_table.py")


def _load_script():
    spec = importlib.util.spec_from_file_location("compat_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_docs_are_rendered_from_the_committed_probes(tmp_path):
    reports = sorted(glob.glob(os.path.join(ROOT, "docs", "compat", "3.*.json")))
    assert len(reports) >= 2  # 3.12 and 3.13
    compat = tmp_path / "compat.md"
    readme = tmp_path / "README.md"
    shutil.copy(os.path.join(ROOT, "README.md"), readme)
    subprocess.run([sys.executable, SCRIPT, "render", str(compat),
                    str(readme), *reports], check=True, timeout=60)
    for made, committed in [(compat, os.path.join(ROOT, "docs", "compat.md")),
                            (readme, os.path.join(ROOT, "README.md"))]:
        with open(committed) as text:
            assert made.read_text() == text.read(), committed


def test_packages_list_has_at_least_30_packages():
    rows = _load_script().read_list(
        os.path.join(ROOT, "scripts", "compat-packages.txt"))
    assert len(rows) >= 30
    # area, distribution, module, first use
    assert all(len(row) == 4 and all(row) for row in rows)


def test_built_with_reads_the_installed_files():
    script = _load_script()
    assert script.built_with(metadata.distribution("pytest")) == "pure Python"
    # poolparty's own extension is plain C.
    assert script.built_with(metadata.distribution("poolparty")) == "C/C++"
