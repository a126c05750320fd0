"""Where people write CPU-bound Python: a Jupyter notebook, the REPL, ``-c``.

A real Jupyter kernel (ipykernel, driven by jupyter_client or nbclient)
runs cells that define a function, a lambda, a closure and a class, and
maps them over both APIs; the REPL is fed through a pseudo-terminal.  In
all three, ``__main__`` has no file that workers could run again, so what
is defined there travels by value.
"""

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from conftest import REFERENCE

pytestmark = pytest.mark.skipif(REFERENCE, reason="poolparty-specific")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "notebook.ipynb")
KERNEL = "poolparty-test"


@pytest.fixture
def kernel_spec(tmp_path, monkeypatch):
    """A kernel spec for this very Python (not whatever `python3` is)."""
    pytest.importorskip("ipykernel", reason="the notebook extra is not installed")
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                 "{connection_file}"],
        "display_name": "poolparty test", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # Keep the kernel's runtime files and IPython's profile in tmp_path.
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    return KERNEL


class Kernel:
    """A started kernel; run(code) returns (output text, error text)."""

    def __init__(self, name, cwd):
        from jupyter_client.manager import start_new_kernel

        self.manager, self.client = start_new_kernel(
            kernel_name=name, cwd=str(cwd), startup_timeout=120)

    def run(self, code, timeout=120):
        msg_id = self.client.execute(code)
        out, err = [], []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.client.get_iopub_msg(
                timeout=max(1.0, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                out.append(content["data"].get("text/plain", "") + "\n")
            elif kind == "error":
                err.append("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out), "".join(err)

    def close(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernel(kernel_spec, tmp_path):
    kernel = Kernel(kernel_spec, tmp_path)
    yield kernel
    kernel.close()


CELLS = [
    "from poolparty import SubinterpreterPool, SubinterpreterPoolExecutor",
    "def square(x):\n    return x * x",
    "cube = lambda x: x ** 3",
    "offset = 100\n"
    "def make_adder(n):\n"
    "    def add(x):\n"
    "        return x + n + offset\n"
    "    return add\n"
    "add5 = make_adder(5)",
    "class Point:\n"
    "    def __init__(self, x):\n"
    "        self.x = x\n"
    "    def __repr__(self):\n"
    "        return f'Point({self.x})'",
]


@pytest.mark.parametrize("dispatch", ["queue", "call"])
def test_a_jupyter_kernel_maps_cell_functions_over_both_apis(kernel, dispatch):
    for cell in CELLS:
        out, err = kernel.run(cell)
        assert err == "", err
    out, err = kernel.run(
        f"with SubinterpreterPool(2, dispatch={dispatch!r}) as pool:\n"
        "    points = pool.map(Point, [1, 2])\n"
        "    print('pool', pool.map(square, range(4)), pool.map(cube, [2]),\n"
        "          pool.map(add5, [1]), points,\n"
        "          all(type(p) is Point for p in points))\n"
        f"with SubinterpreterPoolExecutor(2, dispatch={dispatch!r}) as ex:\n"
        "    print('executor', ex.submit(square, 7).result(),\n"
        "          list(ex.map(cube, [3])), ex.submit(add5, 2).result(),\n"
        "          list(ex.map(Point, [3])))\n"
    )
    assert err == "", err
    assert out.splitlines() == [
        "pool [0, 1, 4, 9] [8] [106] [Point(1), Point(2)] True",
        "executor 49 [27] 107 [Point(3)]",
    ]


def test_an_error_in_a_task_shows_its_traceback_in_the_cell(kernel):
    out, err = kernel.run(
        "from poolparty import SubinterpreterPool\n"
        "def explode(x):\n"
        "    raise ValueError(f'bad item {x}')\n"
        "pool = SubinterpreterPool(2)\n"
        "pool.map(explode, [7])"
    )
    assert "ValueError" in err and "bad item 7" in err, err
    # The worker's traceback, as the __cause__: the task's own frame.
    assert "RemoteTraceback" in err, err
    assert "in explode" in err, err
    # And the pool, in the kernel, goes on working.
    out, err = kernel.run("print(pool.map(lambda x: x + 1, [1])); pool.close()")
    assert err == "" and out.strip() == "[2]", (out, err)


def test_the_example_notebook_runs(kernel_spec, tmp_path):
    pytest.importorskip("nbclient", reason="the notebook extra is not installed")
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(EXAMPLE, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name=kernel_spec,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = {}
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        texts = [o.get("text", "") or o.get("data", {}).get("text/plain", "")
                 for o in cell.outputs]
        errors = [o for o in cell.outputs if o.output_type == "error"]
        tags = cell.metadata.get("tags", [])
        if "raises-exception" in tags:
            assert errors and errors[0]["ename"] == "ZeroDivisionError", cell
            assert "RemoteTraceback" in "\n".join(errors[0]["traceback"])
        else:
            assert not errors, cell
        for tag in tags:
            if tag.startswith("expect:"):
                outputs[tag[len("expect:"):]] = "".join(texts).strip()
    assert outputs == {
        "function": "[0, 1, 1, 2, 3, 5, 8, 13, 21, 34]",
        "lambda": "[0, 1, 4, 9, 16]",
        "closure": "[110, 111, 112]",
        "class": "[Word('a', 1), Word('bb', 2)]",
        "executor": "[55, 6765]",
    }


def read_until(fd, marker, timeout=120):
    """What the terminal shows until a line starting with marker, or fail."""
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        for line in seen.replace(b"\r", b"").split(b"\n")[:-1]:  # whole lines
            if line.startswith(marker):
                return line.decode(), seen
    raise AssertionError(f"no {marker!r} in the terminal:\n{seen.decode(errors='replace')}")


@pytest.mark.parametrize("dispatch", ["queue", "call"])
def test_the_repl_maps_functions_typed_at_its_prompt(tmp_path, dispatch):
    # `python -i` on a pseudo-terminal: the interactive prompt as people
    # use it (on 3.13 the new REPL; one-line definitions, so that its
    # auto-indentation does not matter).
    lines = [
        "from poolparty import SubinterpreterPool, SubinterpreterPoolExecutor",
        "def square(x): return x * x",
        "",
        "class Box(list): pass",
        "",
        "scale = 3",
        "times = lambda x: x * scale",
        f"pool = SubinterpreterPool(2, dispatch={dispatch!r})",
        "boxes = pool.map(Box, [[1], [2]])",
        "ex = SubinterpreterPoolExecutor(2)",
        "print('RES' + 'ULT', pool.map(square, range(4)), pool.map(times, [1, 2]),"
        " [type(b) is Box for b in boxes], ex.submit(times, 5).result())",
        "pool.close(); pool.join(); ex.shutdown()",
        "exit()",
    ]
    main, child = pty.openpty()
    env = dict(os.environ, TERM="dumb", PYTHONSTARTUP="")
    proc = subprocess.Popen([sys.executable, "-i", "-q"], stdin=child,
                            stdout=child, stderr=child, cwd=tmp_path, env=env,
                            close_fds=True)
    os.close(child)
    try:
        for line in lines:
            os.write(main, line.encode() + b"\r")
            time.sleep(0.05)
        line, seen = read_until(main, b"RESULT")
        assert line.split(" ", 1)[1] == "[0, 1, 4, 9] [3, 6] [True, True] 15", seen
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)


def test_python_c_functions_and_classes():
    # `python -c`: __main__ has no file either.
    code = (
        "from poolparty import SubinterpreterPool, SubinterpreterPoolExecutor\n"
        "def square(x):\n"
        "    return x * x\n"
        "class Box:\n"
        "    def __init__(self, v):\n"
        "        self.v = v\n"
        "scale = 3\n"
        "for dispatch in ('queue', 'call'):\n"
        "    with SubinterpreterPool(2, dispatch=dispatch) as pool:\n"
        "        boxes = pool.map(Box, [1, 2])\n"
        "        print(pool.map(square, range(4)), [type(b) is Box for b in boxes],\n"
        "              pool.map(lambda x: x * scale, [1, 2]))\n"
        "    with SubinterpreterPoolExecutor(2, dispatch=dispatch) as ex:\n"
        "        print(ex.submit(square, 5).result(), list(ex.map(Box, [7]))[0].v)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "[0, 1, 4, 9] [True, True] [3, 6]", "25 7"] * 2
