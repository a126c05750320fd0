"""Tests for the benchmark driver (poolparty_bench, not its workloads).

Fast, and independent of poolparty itself: argument parsing, folding
repeats into records, speedups, JSON/CSV, the process-tree sampler on real
child processes, a real cell, one tiny end-to-end run and the charts.
"""

import atexit
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import pytest

if sysconfig.get_config_var("Py_GIL_DISABLED"):
    pytest.skip("the suite's driver runs on a default (GIL) build; a "
                "free-threaded one only runs the nogil-* cells",
                allow_module_level=True)

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..",
                                   "src"))

# Without an installed poolparty_bench, put a link to src/poolparty_bench on
# the path, and not src/ itself: src/poolparty would shadow the built
# extension for every other test in the session.
if importlib.util.find_spec("poolparty_bench") is None:
    _ROOT = tempfile.mkdtemp(prefix="test-bench-path-")
    atexit.register(shutil.rmtree, _ROOT, True)
    os.symlink(os.path.join(SRC, "poolparty_bench"),
               os.path.join(_ROOT, "poolparty_bench"))
    sys.path.insert(0, _ROOT)
else:
    _ROOT = None

from poolparty_bench import (  # noqa: E402
    cli, modes, proctree, pythons, results)

psutil = pytest.importorskip("psutil")

MB = 2**20


@pytest.fixture
def child_env(monkeypatch):
    """Let child Pythons import poolparty_bench the way this test does."""
    if _ROOT is not None:
        path = os.environ.get("PYTHONPATH")
        monkeypatch.setenv(
            "PYTHONPATH", _ROOT + (os.pathsep + path if path else ""))
    return dict(os.environ)


# --------------------------------------------------------------- options --

def test_defaults():
    args = cli.parse_args([])
    assert args.bench == list(cli.DEFAULT_BENCHES)
    assert args.bench == ["fib", "fib2", "nbody", "nbody_no_share",
                          "raytrace", "data_pass"]
    assert args.mode == list(modes.DEFAULT_RUN_MODES)
    assert "interp-submit" not in args.mode  # only when named
    assert args.workers == sorted({os.cpu_count(), 16})
    assert args.repeat == 3
    assert args.scale is None
    assert args.python == []
    assert args.out == "bench-results"
    assert not args.no_nogil


def test_lists_and_repeatable_options():
    args = cli.parse_args([
        "--bench", "raytrace,fib,fib", "--mode", "interp,subprocess",
        "--workers", "16,2,2", "--repeat", "5", "--scale", "0.5",
        "--python", "/a/python", "--python", "/b/python",
        "--nogil-python", "/c/python3.13t", "--out", "/tmp/x",
    ])
    assert args.bench == ["raytrace", "fib"]
    assert args.mode == ["interp", "subprocess"]
    assert args.workers == [2, 16]
    assert args.repeat == 5
    assert args.scale == 0.5
    assert args.python == ["/a/python", "/b/python"]
    assert args.nogil_python == "/c/python3.13t"
    assert args.out == "/tmp/x"


def test_all_benches():
    assert cli.parse_args(["--bench", "all"]).bench == list(cli.ALL_BENCHES)
    assert "overhead" in cli.ALL_BENCHES and "startup" in cli.ALL_BENCHES


@pytest.mark.parametrize("argv", [
    ["--bench", "nope"],
    ["--mode", "interp,warp"],
    ["--workers", "0"],
    ["--workers", "two"],
    ["--repeat", "0"],
    ["--scale", "-1"],
])
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.parse_args(argv)
    assert exc.value.code == 2


def test_scale_for():
    args = cli.parse_args([])
    assert cli.scale_for("fib", args) == cli.DEFAULT_SCALES["fib"]
    assert cli.scale_for("startup", args) is None
    args = cli.parse_args(["--scale", "1"])
    assert all(cli.scale_for(b, args) == 1.0 for b in cli.DEFAULT_BENCHES)


class FakeInterp:
    def __init__(self, label, free_threaded):
        self.label = label
        self.free_threaded = free_threaded
        self.build = "free-threaded" if free_threaded else "default"
        self.path = f"/fake/{label}"


def test_plan_cells():
    default, nogil = FakeInterp("3.13.0", False), FakeInterp("3.13.0t", True)
    args = cli.parse_args(["--bench", "fib,startup", "--workers", "2,16"])
    cells = cli.plan_cells(args.bench, [default, nogil], args.mode,
                           args.workers, args)
    fib = [c for c in cells if c["bench"] == "fib"]
    # Sequential modes run once, with one worker.
    seq = [c for c in fib if c["mode"] in modes.SEQUENTIAL_MODES]
    assert [(c["mode"], c["workers"]) for c in seq] == [
        ("sequential", 1), ("nogil-sequential", 1)]
    # The nogil-* modes go to the free-threaded Python, the others not.
    for cell in fib:
        on_nogil = cell["python"] == "3.13.0t"
        assert cell["mode"].startswith("nogil-") == on_nogil
    interp = [c["workers"] for c in fib if c["mode"] == "interp"]
    assert interp == [2, 16]
    assert len(fib) == 1 + 9 * 2 + 1 + 2 * 2
    # startup has nothing to start in a sequential mode.
    startup = [c for c in cells if c["bench"] == "startup"]
    assert startup and not any(c["mode"] in modes.SEQUENTIAL_MODES
                               for c in startup)
    assert all(c["scale"] is None for c in startup)


def test_no_gil_reaches_the_cells(monkeypatch):
    seen = []

    class Outcome:
        stdout = pythons.MARKER + '{"wall_s": 1.0}'
        stderr = ""
        timed_out = False
        peak_rss_bytes = 1
        cpu_s = 1.0
        wall_s = 1.0
        machine = None
        returncode = 0

    def fake_run(cmd, env, timeout):
        seen.append(cmd)
        return Outcome()

    monkeypatch.setattr(proctree, "run_sampled", fake_run)
    cell = {"interp": FakeInterp("3.13.0", False), "bench": "fib",
            "mode": "interp", "workers": 2, "scale": 1.0}
    cell["interp"].env = {}
    cli.run_once(cell, 10, sample_gil=False)
    cli.run_once(cell, 10)
    assert "--no-gil" in seen[0] and "--no-gil" not in seen[1]
    assert cli.parse_args(["--no-gil"]).no_gil is True


def test_extra_modes_run_when_named_on_the_default_build():
    default, nogil = FakeInterp("3.13.0", False), FakeInterp("3.13.0t", True)
    args = cli.parse_args(["--bench", "overhead", "--mode",
                           "interp-submit,futures", "--workers", "2"])
    cells = cli.plan_cells(args.bench, [default, nogil], args.mode,
                           args.workers, args)
    assert [(c["mode"], c["python"]) for c in cells] == [
        ("interp-submit", "3.13.0"), ("futures", "3.13.0")]


# ----------------------------------------------------------- aggregation --

CELL = {"python": "3.13.0", "build": "default", "bench": "fib",
        "mode": "thread", "workers": 2, "scale": 0.1,
        "python_path": "/x/python"}


def run(wall, cpu=None, peak_mb=100, gil=50.0, correct=True, tasks=64):
    return {"wall_s": wall, "cpu_s": wall if cpu is None else cpu,
            "tasks": tasks, "correct": correct,
            "peak_rss_bytes": peak_mb * MB,
            "gil": {"main": gil, "workers": None}}


def test_run_once_reports_the_noise_a_repeat_ran_under(monkeypatch):
    class Outcome:
        stdout = pythons.MARKER + '{"wall_s": 1.0}'
        stderr = ""
        timed_out = False
        peak_rss_bytes = 1
        cpu_s = 2.0
        wall_s = 2.0
        machine = proctree.MachineCpu(busy_s=3.0, steal_s=0.4)
        returncode = 0

    monkeypatch.setattr(proctree, "run_sampled", lambda *a, **k: Outcome())
    monkeypatch.setattr(results, "usable_cores", lambda: 2)
    cell = {"interp": FakeInterp("3.13.0", False), "bench": "fib",
            "mode": "interp", "workers": 2, "scale": 1.0}
    cell["interp"].env = {}
    out = cli.run_once(cell, 10)
    # 3 s busy, 2 of them the cell's, over 2 s x 2 cores.
    assert out["others_cpu_pct"] == pytest.approx(25.0)
    assert out["steal_pct"] == pytest.approx(10.0)


def test_run_cells_interleaves_the_repeats(monkeypatch):
    # A slow spell of the machine must not land on every repeat of one
    # cell: each cell runs once before any runs twice.
    default = FakeInterp("3.13.0", False)
    cells = [{"interp": default, "python": "3.13.0", "build": "default",
              "bench": "fib", "mode": mode, "workers": 2, "scale": 1.0,
              "python_path": default.path}
             for mode in ("sequential", "interp", "thread")]
    order = []

    def fake_run_once(cell, timeout, sample_gil=True):
        order.append(cell["mode"])
        return run(1.0 + 0.1 * len(order))

    monkeypatch.setattr(cli, "run_once", fake_run_once)
    monkeypatch.setattr(cli, "log", lambda *a, **k: None)
    saved = []
    args = cli.parse_args(["--repeat", "3"])
    unavailable = {("3.13.0", "thread"): "not here"}
    recs = cli.run_cells(cells, args, unavailable,
                         on_record=lambda r: saved.append(list(r)))
    assert order == ["sequential", "interp"] * 3
    assert [r["mode"] for r in recs] == ["sequential", "interp", "thread"]
    assert [r["repeats"] for r in recs] == [3, 3, 0]
    # sequential ran 1st, 3rd and 5th: 1.1, 1.3 and 1.5 s.
    assert recs[0]["wall_s_median"] == pytest.approx(1.3)
    assert recs[2]["status"] == results.UNAVAILABLE
    # Saved after every run, each time with every cell run so far.
    assert [len(r) for r in saved] == [1, 2, 3, 3, 3, 3, 3]
    assert saved[-1] == recs


def test_aggregate_keeps_the_worst_noise():
    runs = [dict(run(1.0), others_cpu_pct=1.0, steal_pct=0.0),
            dict(run(1.2), others_cpu_pct=7.5, steal_pct=2.0),
            run(1.1)]
    rec = results.aggregate(CELL, runs, cores=2)
    assert rec["others_cpu_pct_max"] == pytest.approx(7.5)
    assert rec["steal_pct_max"] == pytest.approx(2.0)
    assert results.aggregate(CELL, [run(1.0)], cores=2)[
        "others_cpu_pct_max"] is None


def test_aggregate_min_median_max():
    runs = [run(3.0, gil=10.0, peak_mb=120), run(1.0, gil=30.0),
            run(2.0, cpu=4.0, gil=20.0)]
    rec = results.aggregate(CELL, runs, cores=2)
    assert list(rec) == list(results.COLUMNS)
    assert (rec["wall_s_min"], rec["wall_s_median"], rec["wall_s_max"]) == (
        1.0, 2.0, 3.0)
    assert rec["repeats"] == 3 and rec["tasks"] == 64
    # cpu_s / (wall * cores): 50 %, 50 %, 100 % -> median 50 %
    assert rec["cpu_pct"] == pytest.approx(50.0)
    assert rec["peak_rss_mb"] == pytest.approx(120.0)
    assert rec["gil_contention_pct"] == pytest.approx(20.0)
    assert rec["us_per_task"] == pytest.approx(2.0e6 / 64)
    assert rec["correct"] is True and rec["status"] == "ok"
    assert rec["error"] is None and rec["speedup"] is None


def test_us_per_task_comes_from_the_map_alone_when_measured():
    # The wall includes starting and stopping the pool; the per-task
    # figure is the map's median time over the tasks.
    runs = [dict(run(3.0), map_s=0.5), dict(run(1.0), map_s=0.1),
            dict(run(2.0), map_s=0.2)]
    rec = results.aggregate(dict(CELL, bench="overhead"), runs, cores=2)
    assert rec["wall_s_median"] == 2.0
    assert rec["us_per_task"] == pytest.approx(0.2e6 / 64)
    assert rec["cpu_us_per_task"] is None  # not measured by these runs
    runs = [dict(r, map_cpu_s=c) for r, c in zip(runs, (0.3, 0.1, 0.2))]
    rec = results.aggregate(dict(CELL, bench="overhead"), runs, cores=2)
    assert rec["cpu_us_per_task"] == pytest.approx(0.2e6 / 64)


def test_aggregate_wrong_and_failed_repeats():
    rec = results.aggregate(CELL, [run(1.0), run(1.2, correct=False)], 2)
    assert rec["status"] == "ok" and rec["correct"] is False

    rec = results.aggregate(CELL, [run(1.0), {"error": "boom"}, run(3.0)], 2)
    assert rec["status"] == "failed" and rec["correct"] is False
    assert rec["error"] == "boom"
    assert rec["wall_s_median"] == 2.0  # from the repeats that ran

    rec = results.aggregate(CELL, [{"error": "boom"}], 2)
    assert rec["wall_s_median"] is None and rec["correct"] is False


def test_worker_gils_worst_and_mean_skip_unsampled_workers():
    # With many workers and a short run, a worker may never be sampled.
    runs = [dict(run(1.0), gil={"main": 5.0, "workers": [80.0, None, 60.0]}),
            dict(run(1.0), gil={"main": 7.0, "workers": [None, None, None]})]
    rec = results.aggregate(dict(CELL, mode="interp"), runs, cores=2)
    assert rec["gil_contention_pct"] == pytest.approx((80.0 + 7.0) / 2)
    assert rec["gil_workers_pct"] == pytest.approx(70.0)


def test_no_gil_is_null_not_zero():
    runs = [dict(run(1.0), gil={"main": None, "workers": None,
                                "note": "free-threaded build: no GIL"})]
    cell = dict(CELL, build="free-threaded", python="3.13.0t",
                mode="nogil-thread")
    rec = results.aggregate(cell, runs, 2)
    assert rec["gil_contention_pct"] is None
    assert "no GIL" in rec["note"]


def _record(python, build, mode, median, bench="fib", workers=2):
    cell = dict(CELL, python=python, build=build, mode=mode, bench=bench,
                workers=workers)
    return results.aggregate(cell, [run(median)], 2)


def test_speedups():
    recs = [
        _record("3.13.0", "default", "sequential", 4.0, workers=1),
        _record("3.13.0", "default", "interp", 1.0),
        _record("3.12.1", "default", "sequential", 8.0, workers=1),
        _record("3.12.1", "default", "thread", 8.0),
        _record("3.13.0t", "free-threaded", "nogil-sequential", 5.0,
                workers=1),
        _record("3.13.0t", "free-threaded", "nogil-thread", 0.5),
        _record("3.13.0", "default", "thread", 2.0, bench="raytrace"),
    ]
    results.add_speedups(recs, primary_python="3.13.0")
    assert [r["speedup"] for r in recs] == [
        1.0, 4.0,          # against its own sequential
        1.0, 1.0,          # another default build: its own sequential
        0.8, 8.0,          # free-threaded: the driver's sequential
        None,              # no sequential run for raytrace
    ]


def test_the_data_group_and_warm_speedups():
    assert cli.parse_args(["--bench", "data"]).bench == [
        "data_pass", "data_floats", "data_ints", "data_records", "data_text",
        "data_blob"]
    recs = [_record("3.13.0", "default", "sequential", 4.0, workers=1,
                    bench="data_ints"),
            _record("3.13.0", "default", "interp", 2.0, bench="data_ints"),
            _record("3.13.0", "default", "interp", 2.0)]
    for rec, us in zip(recs, (30.0, 10.0, 10.0)):
        rec["us_per_task"] = us
    results.add_speedups(recs, primary_python="3.13.0")
    # From the warm maps' times, for the workloads that time them.
    assert [r["warm_speedup"] for r in recs] == [1.0, 3.0, None]
    assert "warm x" in results.format_table(recs)


def test_unavailable_record():
    rec = results.unavailable_record(dict(CELL, mode="interp-futures"),
                                     "needs 3.14")
    assert rec["status"] == "unavailable" and rec["correct"] is False
    assert rec["error"] == "unavailable: needs 3.14"
    assert rec["wall_s_median"] is None


def test_json_and_csv(tmp_path):
    recs = [_record("3.13.0", "default", "sequential", 2.0, workers=1),
            _record("3.13.0", "default", "thread", 1.0)]
    recs.append(results.unavailable_record(dict(CELL, mode="interp"), "x"))
    results.add_speedups(recs, "3.13.0")
    machine = {"cpu_count": 2, "pythons": []}
    results.write_json(tmp_path / "r.json", machine, recs, {"repeat": 1})
    results.write_csv(tmp_path / "r.csv", recs)

    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["machine"] == machine and doc["run"] == {"repeat": 1}
    assert doc["results"] == recs
    for key in ("python", "build", "bench", "mode", "workers", "tasks",
                "repeats", "wall_s_min", "wall_s_median", "wall_s_max",
                "speedup", "cpu_pct", "peak_rss_mb", "gil_contention_pct",
                "correct"):
        assert key in doc["results"][0]

    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(results.COLUMNS)
    assert len(rows) == 3
    assert float(rows[1]["speedup"]) == pytest.approx(2.0)
    assert rows[2]["wall_s_median"] == "" and rows[2]["correct"] == "False"


def test_machine_info():
    info = results.machine_info([pythons.primary_interpreter()])
    assert info["cpu_count"] == os.cpu_count()
    assert info["pythons"][0]["primary"] is True
    for key in ("cpu_model", "memory_gib", "os", "date"):
        assert key in info


def test_table():
    recs = [_record("3.13.0", "default", "sequential", 2.0, workers=1),
            _record("3.13.0", "default", "thread", 1.0,
                    bench="overhead"),
            results.unavailable_record(dict(CELL, mode="interp"), "why"),
            results.unavailable_record(dict(CELL, mode="interp",
                                            workers=16), "why")]
    results.add_speedups(recs, "3.13.0")
    text = results.format_table(recs)
    assert "us/task" in text and "speedup" in text
    assert "15625.0" in text  # 1 s / 64 tasks, in microseconds
    # An unavailable mode is said once, not as rows.
    assert text.count("unavailable: why") == 1


def test_api_table_puts_each_call_beside_the_stdlibs():
    recs = [_record("3.13.0", "default", mode, median, bench="overhead")
            for mode, median in (("interp-apply_async", 0.5),
                                 ("thread-apply_async", 2.0),
                                 ("interp-imap", 1.0),  # no thread-imap
                                 ("interp", 1.0), ("thread", 4.0))]
    text = results.format_api_table(recs)
    lines = text.splitlines()
    assert lines[0].startswith("Python 3.13.0, 2 workers, 64 no-op tasks")
    assert "| Pool.map | 15625.00 | 62500.00 | 0.25 | - |" in lines
    assert "| Pool.apply_async | 7812.50 | 31250.00 | 0.25 | - |" in lines
    assert not any("imap" in line for line in lines)
    assert results.format_api_table(recs[2:3]) == ""


def test_api_mode_names_every_call_on_both_pools():
    args = cli.parse_args(["--bench", "overhead", "--mode", "api"])
    assert args.mode == list(modes.API_MODES)
    for _label, ours, threads in modes.API_PAIRS:
        assert ours.startswith("interp") and ours in modes.ALL_MODES
        assert threads.startswith(("thread", "futures"))
        assert threads in modes.ALL_MODES
        assert ours in modes.DESCRIPTIONS and threads in modes.DESCRIPTIONS
    # Only the study's own rows run by default.
    assert "interp-imap" not in cli.parse_args([]).mode


# --------------------------------------------------------------- sampler --

ALLOCATE = """
import subprocess, sys, time
size = int(sys.argv[1]) * 2**20
child = None
if len(sys.argv) > 2:
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2],
                              sys.argv[3]])
block = b"x" * size  # written, so resident
time.sleep(0.6)
if child is not None:
    child.wait()
"""

ALLOCATE_LEAF = """
import sys, time
block = b"y" * (int(sys.argv[1]) * 2**20)
time.sleep(0.6)
"""


def test_sampler_sees_one_process_allocate():
    out = proctree.run_sampled([sys.executable, "-c", ALLOCATE, "150"])
    assert out.returncode == 0 and not out.timed_out
    assert out.peak_rss_bytes >= 150 * MB
    assert out.wall_s >= 0.6


def test_sampler_adds_up_the_tree():
    # 120 MB in the child and 120 MB in its own child, at the same time:
    # the peak of the sum exceeds what either holds alone.
    out = proctree.run_sampled(
        [sys.executable, "-c", ALLOCATE, "120", ALLOCATE_LEAF, "120"])
    assert out.returncode == 0
    assert out.peak_rss_bytes >= 240 * MB
    assert out.cpu_s > 0


def test_sampler_kills_on_timeout():
    out = proctree.run_sampled(
        [sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.3)
    assert out.timed_out and out.returncode != 0
    assert out.wall_s < 10


def test_tree_sampler_on_a_live_process():
    proc = subprocess.Popen([sys.executable, "-c", ALLOCATE, "60"])
    try:
        sampler = proctree.ProcessTreeSampler(proc.pid)
        for _ in range(5):
            sampler.sample()
            if sampler.peak_rss_bytes >= 60 * MB:
                break
            import time
            time.sleep(0.1)
        assert sampler.peak_rss_bytes >= 60 * MB
    finally:
        proc.wait()


def test_tree_sampler_scans_for_children_only_every_few_samples(
        monkeypatch):
    # Reading the memory of known processes is cheap; scanning the process
    # table for descendants is not, so it happens every rescan_every-th
    # sample, and a child started later is found at the next scan.
    proc = subprocess.Popen(
        [sys.executable, "-c", ALLOCATE, "1", ALLOCATE_LEAF, "80"])
    scans = []
    real_children = psutil.Process.children

    def counting_children(self, *args, **kwargs):
        scans.append(self.pid)
        return real_children(self, *args, **kwargs)

    monkeypatch.setattr(psutil.Process, "children", counting_children)
    try:
        sampler = proctree.ProcessTreeSampler(proc.pid, rescan_every=4)
        import time
        deadline = time.monotonic() + 5
        while (sampler.peak_rss_bytes < 80 * MB
               and time.monotonic() < deadline):
            assert sampler.sample()
            time.sleep(0.02)
        assert sampler.peak_rss_bytes >= 80 * MB  # the grandchild, found
        assert len(scans) == -(-sampler.samples // 4)
    finally:
        proc.wait()


def test_machine_counters_see_a_busy_command():
    if proctree.MachineCpu.read() is None:
        pytest.skip("no /proc/stat here")
    out = proctree.run_sampled(
        [sys.executable, "-c",
         "import time\nend = time.process_time() + 0.5\n"
         "while time.process_time() < end: pass"])
    assert out.returncode == 0
    assert out.cpu_s >= 0.45
    # The machine was busy at least as long as the command was.
    assert out.machine.busy_s >= out.cpu_s - 0.05
    assert out.machine.steal_s >= 0


# ------------------------------------------------------------- real runs --

def test_cell_reports_one_json_line(child_env):
    done = subprocess.run(
        pythons.cell_command(sys.executable, "--bench", "startup",
                             "--mode", "thread", "--workers", "2"),
        env=child_env, capture_output=True, text=True, timeout=60)
    out = pythons.read_cell_output(done.stdout)
    assert done.returncode == 0, done.stderr
    assert out["tasks"] == 0 and out["correct"] is True
    assert out["wall_s"] > 0 and out["cpu_s"] >= 0


@pytest.mark.parametrize("mode", ["interp", "interp-executor", "interp-submit",
                                  "interp-apply_async-cb", "interp-imap",
                                  "thread-starmap_async", "futures-submit"])
def test_overhead_cell_times_the_map_on_a_started_pool(child_env, mode):
    done = subprocess.run(
        pythons.cell_command(sys.executable, "--bench", "overhead",
                             "--mode", mode, "--workers", "2",
                             "--scale", "0.01", "--no-gil"),
        env=child_env, capture_output=True, text=True, timeout=120)
    out = pythons.read_cell_output(done.stdout)
    assert done.returncode == 0, done.stderr
    assert out["tasks"] == 200 and out["correct"] is True
    # The map alone: shorter than the wall, which also starts the pool,
    # warms it up and stops it.
    assert 0 < out["map_s"] < out["wall_s"]


def test_cell_reports_errors(child_env):
    done = subprocess.run(
        pythons.cell_command(sys.executable, "--bench", "startup",
                             "--mode", "nogil-thread", "--workers", "2"),
        env=child_env, capture_output=True, text=True, timeout=60)
    out = pythons.read_cell_output(done.stdout)
    if modes.is_free_threaded():
        pytest.skip("this Python is free-threaded")
    assert done.returncode == 1
    assert "free-threaded" in out["error"]


def test_probe(child_env):
    done = subprocess.run(
        pythons.cell_command(sys.executable, "--probe", "interp-futures"),
        env=child_env, capture_output=True, text=True, timeout=60)
    out = pythons.read_cell_output(done.stdout)
    backport = (sys.version_info >= (3, 13) and
                importlib.util.find_spec("interpreters_backport") is not None)
    if sys.version_info >= (3, 14) or backport:
        assert out["unavailable"] is None
    else:
        assert "3.14" in out["unavailable"]


def test_end_to_end(tmp_path, child_env, capsys):
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "out"
    code = cli.main(["--bench", "fib,startup", "--mode", "sequential,thread",
                     "--workers", "2", "--repeat", "2", "--scale", "0.001",
                     "--out", str(out_dir)])
    assert code == 0
    doc = json.loads((out_dir / "results.json").read_text())
    recs = {(r["bench"], r["mode"]): r for r in doc["results"]}
    assert set(recs) == {("fib", "sequential"), ("fib", "thread"),
                         ("startup", "thread")}
    fib_seq = recs[("fib", "sequential")]
    assert fib_seq["correct"] is True and fib_seq["repeats"] == 2
    assert fib_seq["speedup"] == pytest.approx(1.0)
    assert fib_seq["workers"] == 1 and fib_seq["tasks"] == 64
    assert fib_seq["peak_rss_mb"] > 5
    assert recs[("fib", "thread")]["speedup"] > 0
    assert recs[("startup", "thread")]["tasks"] == 0
    assert doc["machine"]["pythons"][0]["path"] == sys.executable
    for name in ("results.csv", "fib.png", "fib.svg", "startup.png",
                 "summary.png", "summary.svg"):
        assert (out_dir / name).stat().st_size > 0
    table = capsys.readouterr().out
    assert "sequential" in table and "speedup" in table


# ---------------------------------------------------------------- charts --

def test_chart_bars_find_their_own_bench():
    from poolparty_bench import charts

    recs = [_record("3.13.0", "default", "sequential", 2.0, bench="fib",
                    workers=1),
            _record("3.13.0", "default", "sequential", 3.0, bench="nbody",
                    workers=1),
            _record("3.13.0", "default", "interp", 1.0, bench="fib",
                    workers=16),
            _record("3.13.0", "default", "interp", 1.5, bench="nbody",
                    workers=16)]
    index = charts.index_records(recs)
    seq = ("sequential", "3.13.0")
    # The one sequential record stands in every worker group.
    assert charts.find_record(index, "fib", seq, 2)["wall_s_median"] == 2.0
    assert charts.find_record(index, "fib", seq, 16)["wall_s_median"] == 2.0
    assert charts.find_record(index, "nbody", seq, 2)["wall_s_median"] == 3.0
    interp = ("interp", "3.13.0")
    assert charts.find_record(index, "nbody", interp, 16)[
        "wall_s_median"] == 1.5
    assert charts.find_record(index, "nbody", interp, 2) is None
    assert charts.groups(recs) == [16]


def test_charts_from_synthetic_results(tmp_path):
    pytest.importorskip("matplotlib")
    from poolparty_bench import charts

    recs = []
    for bench in ("fib", "nbody"):
        recs.append(_record("3.13.0", "default", "sequential", 4.0,
                            bench=bench, workers=1))
        recs.append(_record("3.13.0t", "free-threaded", "nogil-sequential",
                            4.4, bench=bench, workers=1))
        for workers in (2, 16):
            for mode, wall in (("interp", 1.1), ("thread", 4.2),
                               ("subprocess", 1.3)):
                recs.append(_record("3.13.0", "default", mode, wall,
                                    bench=bench, workers=workers))
            wrong = _record("3.13.0t", "free-threaded", "nogil-thread", 9.0,
                            bench=bench, workers=workers)
            wrong["correct"] = False
            wrong["gil_contention_pct"] = None
            recs.append(wrong)
            recs.append(results.unavailable_record(
                dict(CELL, bench=bench, mode="interp-futures",
                     workers=workers), "3.14"))
    recs.append(_record("3.13.0", "default", "thread", 0.2,
                        bench="overhead"))
    results.add_speedups(recs, "3.13.0")

    paths = charts.write_charts(recs, str(tmp_path), "test")
    names = sorted(os.path.basename(p) for p in paths)
    assert names == sorted(f"{stem}.{ext}"
                           for stem in ("fib", "nbody", "overhead",
                                        "summary")
                           for ext in ("png", "svg"))
    for path in paths:
        data = open(path, "rb").read()
        if path.endswith(".png"):
            assert data.startswith(b"\x89PNG")
        else:
            assert b"<svg" in data[:500]


def test_the_codec_bench_runs_and_checks_what_it_times(capsys):
    from poolparty_bench import codec

    assert codec.main(["-n", "256", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert all(kind in out for kind in codec.kinds(256))


def test_the_share_floor_builds_what_each_data_workload_returns():
    # --share's floor column times _floor's build: it must make objects
    # equal to the task's results, of the same types, from its parts.
    from poolparty_bench import codec
    from poolparty_bench.workloads import REAL_DATA, data_pass

    for workload in (data_pass, *REAL_DATA):
        results = [workload.task(arg) for arg in workload.inputs(1.0)[:2]]
        build, parts = codec._floor(results)
        built = [build(part) for part in parts]
        assert built == results, workload.NAME
        for one, other in zip(built, results):
            assert type(one) is type(other)
            if isinstance(one, list):
                assert {type(x) for x in one} == {type(x) for x in other}


def test_the_shapes_bench_compares_builds_pass_by_pass(capsys):
    from poolparty_bench import shapes

    assert shapes.main(["--repeat", "1", "--only", "1 MB",
                        "--python", sys.executable,
                        "--python", sys.executable]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("map, 1 MB")]
    assert len(rows) == 1
    cells = rows[0].split("|")[1:]
    assert len(cells) == 2  # one per interpreter given
    ours, threads, ratio, versus_last = map(float, cells[0].split())
    assert ours > 0 and threads > 0
    assert abs(ratio - ours / threads) < 0.01 + 0.01 * ratio
    assert float(cells[1].split()[3]) == 1.0  # the last build against itself


def test_the_shapes_bench_shows_a_shape_an_older_build_lacks(monkeypatch,
                                                              capsys):
    # An older build runs only the shapes it knows: its cells are "-",
    # and the newer build's row is still printed, not a crash.
    from poolparty_bench import shapes

    name = "map, 1 MB results, 256"
    passes = {"new": {name: [0.2, 0.1]}, "old": {}}

    def fake_run(command, **kwargs):
        return subprocess.CompletedProcess(command, 0,
                                           json.dumps(passes[command[0]]))

    monkeypatch.setattr(subprocess, "run", fake_run)  # main() imports it
    assert shapes.main(["--repeat", "1", "--only", "1 MB",
                        "--python", "new", "--python", "old"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith(name)]
    assert len(rows) == 1
    new_cells, old_cells = (cell.split() for cell in rows[0].split("|")[1:])
    assert new_cells == ["200.0", "100.0", "2.00", "-"]
    assert old_cells == ["-", "-", "-", "-"]


def test_the_shapes_bench_checks_every_result_arrived(monkeypatch):
    from poolparty_bench import shapes

    monkeypatch.setitem(shapes.SHAPES, "short", (shapes.noop, range(10), 2,
                                                 "map", 1, "queue"))
    monkeypatch.setattr(shapes, "_run", lambda *a: [1])
    with pytest.raises(AssertionError, match="1 results for 10 tasks"):
        shapes.measure_once(["short"])


def test_the_shapes_bench_starmaps_the_tuples_it_names():
    from poolparty_bench import shapes

    held = list(shapes.SHAPES["starmap, 3 args, 20,000"][1])
    unheld = list(shapes.SHAPES["starmap, zip(range), chunksize 10"][1])
    shared = list(shapes.SHAPES["starmap, a shared list, chunksize 10"][1])
    assert len(held) == len(unheld) == len(shared) == 20_000
    assert held[1000] == (3000, 3001, 3002) and unheld[1000] == (2000, 2001)
    # Held: the caller's list holds the ints too; zip(range): only the
    # tuple does (the two paths design.md's "A starmap's argument tuples"
    # tells apart).
    # (Counted outside the asserts, whose rewriting keeps a reference.)
    counts = sys.getrefcount(held[1000][0]), sys.getrefcount(unheld[1000][0])
    assert counts[0] > 2 and counts[1] == 2, counts
    assert shared[0][1] is shared[-1][1] and shared[5] == (10, [0] * 8)
    assert shapes._run(_FakeStarPool(), "starmap", shapes.first, held[:3],
                       2) == [0, 3, 6]


class _FakeStarPool:
    def starmap(self, fn, args, chunksize):
        return [fn(*a) for a in args]
