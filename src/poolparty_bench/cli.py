"""poolparty-bench: run the pool party suite and write its results.

Every repeat of every cell (python x bench x mode x workers) runs in a
fresh process, `python -m poolparty_bench.cell`, on the cell's interpreter.
This driver samples that process's tree for memory, folds the repeats into
one record per cell, and writes results.json, results.csv and the charts.
See docs/bench.md.
"""

import argparse
import os
import sys
import time

from . import modes
from .modes import (ALL_MODES, API_MODES, DEFAULT_BUILD_MODES,
                    DEFAULT_RUN_MODES, EXTRA_MODES, FREE_THREADED_MODES,
                    SEQUENTIAL_MODES)
from .results import WARM_BENCHES

DEFAULT_BENCHES = ("fib", "fib2", "nbody", "nbody_no_share", "raytrace",
                   "data_pass")
STARTUP = "startup"
# Distinct values, as computations return them, timed on warm pools too;
# `--bench data` names them all with data_pass.
REAL_DATA_BENCHES = WARM_BENCHES
ALL_BENCHES = DEFAULT_BENCHES + ("overhead", STARTUP) + REAL_DATA_BENCHES

# Scale of each workload in a default run, measured so that the whole
# default run (every mode, 2 and 16 workers, 3 repeats, nogil included)
# takes at most 10 minutes on the 2-core machine (8 min 22 s when last
# measured; docs/bench.md has the figures).  --scale overrides all of them,
# and --scale 1 is the original study's sizes.
DEFAULT_SCALES = {
    "fib": 0.4,
    "fib2": 0.15,
    "nbody": 0.01,
    "nbody_no_share": 0.01,
    "raytrace": 0.0625,
    "data_pass": 0.125,
    "overhead": 0.1,
    **dict.fromkeys(REAL_DATA_BENCHES, 0.25),
}

DEFAULT_REPEAT = 3
# A run of nbody on nogil-thread at --scale 1 takes several minutes.
DEFAULT_TIMEOUT_S = 1800.0


def log(message):
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- options --

def _names(text, known, what):
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no {what} given")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown)} "
            f"(choose from {', '.join(known)})")
    return list(dict.fromkeys(names))


def _bench_list(text):
    if text.strip() == "all":
        return list(ALL_BENCHES)
    if text.strip() == "data":
        return ["data_pass", *REAL_DATA_BENCHES]
    return _names(text, ALL_BENCHES, "bench")


def _mode_list(text):
    if text.strip() == "api":
        return list(API_MODES)
    return _names(text, ALL_MODES, "mode")


def _workers_list(text):
    try:
        counts = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}")
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts must be >= 1")
    return sorted(set(counts))


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return value
    return parse


def default_workers():
    return sorted({os.cpu_count() or 1, 16})


def build_parser():
    parser = argparse.ArgumentParser(
        prog="poolparty-bench",
        description="Run the pool party benchmark suite: the same work "
                    "on subinterpreter pools, threads, subprocesses and a "
                    "free-threaded Python.",
        epilog="Results go to OUT/results.json, OUT/results.csv and "
               "OUT/<bench>.svg/.png. See docs/bench.md.")
    parser.add_argument(
        "--bench", type=_bench_list, default=list(DEFAULT_BENCHES),
        metavar="LIST",
        help=f"comma-separated workloads, or 'all' (default: "
             f"{','.join(DEFAULT_BENCHES)}; also: overhead, startup, "
             f"{', '.join(REAL_DATA_BENCHES)}; 'data' = data_pass and "
             f"those)")
    parser.add_argument(
        "--mode", type=_mode_list, default=None, metavar="LIST",
        help="comma-separated modes (default: all of them but "
             + ", ".join(EXTRA_MODES) + "; the nogil-* ones need a "
             "free-threaded Python; 'api' = every API path on our pool and "
             "on the stdlib's threads, for --bench overhead). Modes: "
             + ", ".join(ALL_MODES))
    parser.add_argument(
        "--workers", type=_workers_list, default=None, metavar="LIST",
        help="comma-separated worker counts (default: the CPU count and 16, "
             f"here {','.join(map(str, default_workers()))})")
    parser.add_argument(
        "--repeat", type=_positive(int), default=DEFAULT_REPEAT, metavar="N",
        help=f"fresh-process runs per cell (default: {DEFAULT_REPEAT})")
    parser.add_argument(
        "--scale", type=_positive(float), default=None, metavar="F",
        help="size of every workload; 1 = the original study's sizes "
             "(default: per-workload scales that keep a default run under "
             "10 minutes on 2 cores; see --list)")
    parser.add_argument(
        "--python", action="append", default=[], metavar="PATH",
        help="another interpreter to run the cells on (repeatable); a "
             "free-threaded one gets the nogil-* modes")
    parser.add_argument(
        "--nogil-python", metavar="PATH",
        help="the free-threaded Python for the nogil-* modes (default: "
             "what scripts/nogil-python.sh prints, in a checkout)")
    parser.add_argument(
        "--no-nogil", action="store_true",
        help="do not look for a free-threaded Python")
    parser.add_argument(
        "--out", default="bench-results", metavar="DIR",
        help="where results and charts go (default: ./bench-results)")
    parser.add_argument(
        "--timeout", type=_positive(float), default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"kill a run after S seconds (default: {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument(
        "--no-gil", action="store_true",
        help="do not sample GIL contention (sampling a worker's GIL asks it "
             "to drop the GIL every millisecond, which costs the "
             "subinterpreter modes a few per cent of their speed)")
    parser.add_argument(
        "--no-charts", action="store_true", help="write no charts")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="print the cells that would run, and stop")
    parser.add_argument(
        "--list", action="store_true",
        help="list workloads, their default scales and the modes, and stop")
    return parser


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.workers is None:
        args.workers = default_workers()
    if args.mode is None:
        args.mode = list(DEFAULT_RUN_MODES)
        args.mode_given = False
    else:
        args.mode_given = True
    return args


def scale_for(bench, args):
    """The scale BENCH runs at: --scale, else its default."""
    if bench == STARTUP:
        return None
    if args.scale is not None:
        return args.scale
    return DEFAULT_SCALES.get(bench, 1.0)


# ------------------------------------------------------------------- plan --

def modes_for(interp, selected):
    """The selected modes that make sense on INTERP's build."""
    own = (FREE_THREADED_MODES if interp.free_threaded
           else DEFAULT_BUILD_MODES + EXTRA_MODES)
    return [m for m in selected if m in own]


def plan_cells(benches, interpreters, selected_modes, workers, args):
    """Every cell of the run, in the order they run and are reported."""
    cells = []
    for bench in benches:
        for interp in interpreters:
            for mode in modes_for(interp, selected_modes):
                if bench == STARTUP and mode in SEQUENTIAL_MODES:
                    continue  # no pool to start
                counts = [1] if mode in SEQUENTIAL_MODES else workers
                for count in counts:
                    cells.append({
                        "python": interp.label,
                        "build": interp.build,
                        "bench": bench,
                        "mode": mode,
                        "workers": count,
                        "scale": scale_for(bench, args),
                        "python_path": interp.path,
                        "interp": interp,
                    })
    return cells


def gather_interpreters(args, import_root):
    """The driver's Python, then --python ones, then the free-threaded one.

    Returns (interpreters, notes); a note says plainly what was left out.
    """
    from . import pythons

    notes = []
    interpreters = [pythons.primary_interpreter()]

    def add(path, origin):
        interp, error = pythons.resolve(path, import_root)
        if interp is None:
            notes.append(f"{origin} {path} skipped: {error}")
            return None
        for other in interpreters:
            if (os.path.realpath(other.path) == os.path.realpath(interp.path)
                    or (other.label == interp.label and other.primary
                        and interp.env is None)):
                return other
        if any(other.label == interp.label for other in interpreters):
            # Two builds of one version: the rows need telling apart.
            interp.label += f" ({interp.path})"
        interpreters.append(interp)
        return interp

    for path in args.python:
        add(path, "--python")

    wants_nogil = any(m in FREE_THREADED_MODES for m in args.mode)
    have_nogil = any(i.free_threaded for i in interpreters)
    if wants_nogil and not have_nogil:
        path, why = None, None
        if args.nogil_python:
            path = args.nogil_python
        elif args.no_nogil:
            why = "--no-nogil was given"
        elif args.dry_run:
            why = f"a real run would ask {pythons.NOGIL_SCRIPT}"
        else:
            path, why = pythons.nogil_from_script(log)
        if path is not None:
            interp = add(path, "free-threaded Python")
            if interp is not None and not interp.free_threaded:
                notes.append(f"{path} is not a free-threaded build "
                             "(Py_GIL_DISABLED is not 1); it runs the "
                             "default-build modes instead")
            elif interp is not None and interp.gil_enabled:
                notes.append(f"{path} is free-threaded but started with the "
                             "GIL enabled (PYTHON_GIL=1?)")
        if not any(i.free_threaded for i in interpreters):
            notes.append("no free-threaded Python: the nogil-* rows are "
                         f"skipped ({why or 'see above'})")
    return interpreters, notes


def probe_unavailable(cells, log_fn=log):
    """Ask each interpreter once per mode whether the mode can run there.

    Only modes that need something beyond the standard library are asked
    about, each in a process of its own.  Returns {(python, mode): reason}.
    """
    from . import pythons
    import subprocess

    needs_probe = modes.POOLPARTY_MODES + ("interp-futures", "loky")
    reasons = {}
    seen = set()
    for cell in cells:
        key = (cell["python"], cell["mode"])
        if key in seen or cell["mode"] not in needs_probe:
            continue
        seen.add(key)
        interp = cell["interp"]
        cmd = pythons.cell_command(interp.path, "--probe", cell["mode"])
        try:
            done = subprocess.run(cmd, env=interp.env, capture_output=True,
                                  text=True, timeout=120,
                                  stdin=subprocess.DEVNULL)
            out = pythons.read_cell_output(done.stdout)
            if out is None:
                tail = (done.stderr.strip().splitlines() or ["no output"])
                reason = f"probe exited {done.returncode}: {tail[-1]}"
            else:
                reason = out["unavailable"]
        except subprocess.TimeoutExpired:
            reason = "probe timed out"
        if reason:
            reasons[key] = reason
            log_fn(f"{cell['mode']} on Python {cell['python']}: "
                   f"unavailable: {reason}")
    return reasons


# -------------------------------------------------------------------- run --

def run_once(cell, timeout, sample_gil=True):
    """One repeat of CELL in a fresh process; return its run dict."""
    from . import proctree, pythons

    interp = cell["interp"]
    cmd = pythons.cell_command(interp.path, "--bench", cell["bench"],
                               "--mode", cell["mode"],
                               "--workers", str(cell["workers"]))
    if cell["scale"] is not None:
        cmd += ["--scale", repr(cell["scale"])]
    if not sample_gil:
        cmd.append("--no-gil")
    outcome = proctree.run_sampled(cmd, env=interp.env, timeout=timeout)
    out = pythons.read_cell_output(outcome.stdout)
    if outcome.timed_out:
        return {"error": f"timed out after {timeout:g} s"}
    if out is None:
        lines = outcome.stderr.strip().splitlines() or ["no output"]
        return {"error": f"exit code {outcome.returncode}: {lines[-1]}",
                "stderr": outcome.stderr}
    if "error" in out:
        return {"error": out["error"],
                "stderr": out.get("traceback", "") + outcome.stderr}
    out["peak_rss_bytes"] = outcome.peak_rss_bytes
    out["process_cpu_s"] = outcome.cpu_s
    if outcome.machine is not None and outcome.wall_s > 0:
        # What else ran on the machine meanwhile (this driver's sampler
        # included), and what the hypervisor took: a repeat slower than
        # its siblings usually shows it here.
        from .results import usable_cores

        capacity = outcome.wall_s * usable_cores()
        others = max(0.0, outcome.machine.busy_s - outcome.cpu_s)
        out["others_cpu_pct"] = 100.0 * others / capacity
        out["steal_pct"] = 100.0 * outcome.machine.steal_s / capacity
    if outcome.returncode != 0:
        # The figures were printed, so they stand; what went wrong later
        # (seen once: gilknocker's thread aborting the exit) is noted.
        lines = outcome.stderr.strip().splitlines() or ["no message"]
        note = f"exit code {outcome.returncode} after reporting: {lines[-1]}"
        out["note"] = "; ".join(filter(None, [out.get("note"), note]))
    return out


class Progress:
    """Cell k/N, what runs, elapsed time and an estimate of what is left."""

    def __init__(self, total_runs):
        self.total = total_runs
        self.done = 0
        self.start = time.monotonic()
        self.per_bench = {}

    def estimate_left(self, remaining_by_bench):
        spent = [t for ts in self.per_bench.values() for t in ts]
        overall = sum(spent) / len(spent) if spent else None
        if overall is None:
            return None
        left = 0.0
        for bench, runs in remaining_by_bench.items():
            seen = self.per_bench.get(bench)
            left += runs * (sum(seen) / len(seen) if seen else overall)
        return left

    def record(self, bench, seconds):
        self.done += 1
        self.per_bench.setdefault(bench, []).append(seconds)

    @staticmethod
    def clock(seconds):
        if seconds is None:
            return "?"
        seconds = int(seconds)
        return f"{seconds // 60}:{seconds % 60:02d}"


def run_cells(cells, args, unavailable, on_record=None):
    """Run every cell; return the records, in plan order.

    The repeats are interleaved: every cell's first run, then every cell's
    second, and so on.  This machine has slow spells minutes long (a
    cell's three runs once took 22.7, 24.9 and 25.0 s); run back to back, a
    spell lands on the repeats of one cell and skews its ratio to the
    baseline, while interleaved it lands on one repeat of many cells, and
    the median sets it aside.
    """
    from .results import aggregate, unavailable_record, usable_cores

    cores = usable_cores()
    runnable = [c for c in cells
                if (c["python"], c["mode"]) not in unavailable]
    progress = Progress(len(runnable) * args.repeat)
    remaining = {}
    for cell in runnable:
        bench = cell["bench"]
        remaining[bench] = remaining.get(bench, 0) + args.repeat
    runs_of = [[] for _ in cells]

    def records_so_far():
        records = []
        for cell, runs in zip(cells, runs_of):
            reason = unavailable.get((cell["python"], cell["mode"]))
            if reason is not None:
                records.append(unavailable_record(cell, reason))
            elif runs:
                records.append(aggregate(cell, runs, cores))
        return records

    if on_record and len(runnable) < len(cells):
        on_record(records_so_far())
    for rep in range(args.repeat):
        k = 0
        for cell, runs in zip(cells, runs_of):
            if (cell["python"], cell["mode"]) in unavailable:
                continue
            k += 1
            eta = progress.estimate_left(remaining)
            log(f"[cell {k}/{len(runnable)}] {cell['bench']} "
                f"py{cell['python']} {cell['mode']} w={cell['workers']} "
                f"run {rep + 1}/{args.repeat}  elapsed "
                f"{progress.clock(time.monotonic() - progress.start)}  "
                f"ETA {progress.clock(eta)}")
            t0 = time.monotonic()
            run = run_once(cell, args.timeout, sample_gil=not args.no_gil)
            spent = time.monotonic() - t0
            progress.record(cell["bench"], spent)
            remaining[cell["bench"]] -= 1
            if "error" in run:
                log(f"    FAILED: {run['error']}")
                detail = run.pop("stderr", "").strip()
                if detail:
                    log("    " + "\n    ".join(detail.splitlines()[-8:]))
            else:
                log(f"    {run['wall_s']:.3f} s, correct={run['correct']}")
            runs.append(run)
            if on_record:
                on_record(records_so_far())
    return records_so_far()


def _size(workload, scale):
    """Tasks and task argument of WORKLOAD at SCALE, in a few words."""
    try:
        items = workload.inputs(scale)
    except Exception as exc:
        return f"inputs() failed: {exc}"
    text = f"{len(items)} tasks"
    if items and all(item == items[0] for item in items):
        text += f" of task({items[0]!r})"
    return text


def list_everything():
    lines = ["workloads (default scale):"]
    try:
        from . import workloads

        found = workloads.WORKLOADS
    except Exception as exc:
        found = {}
        lines.append(f"  (cannot import the workloads: {exc})")
    for name in ALL_BENCHES:
        if name == STARTUP:
            desc = "pool start + stop only, no tasks"
        elif name in found:
            desc = found[name].DESCRIPTION
        else:
            desc = "(missing)"
        default_scale = DEFAULT_SCALES.get(name, 1.0)
        scale = "-" if name == STARTUP else f"{default_scale:g}"
        default = ("" if name in DEFAULT_BENCHES
                   else "  [not in the default run]")
        lines.append(f"  {name:15} {scale:>6}  {desc}{default}")
        if name in found:
            lines.append(f"  {'':15} {'':>6}  at the default scale: "
                         f"{_size(found[name], default_scale)}")
    lines.append("modes:")
    for mode in ALL_MODES:
        extra = "  [not in the default run]" if mode in EXTRA_MODES else ""
        lines.append(f"  {mode:16} {modes.DESCRIPTIONS[mode]}{extra}")
    return "\n".join(lines)


def check_benches(benches):
    """Return the benches that cannot be loaded, with why."""
    missing = {}
    wanted = [b for b in benches if b != STARTUP]
    if not wanted:
        return missing
    try:
        from . import workloads

        found = workloads.WORKLOADS
    except Exception as exc:
        return {b: f"cannot import poolparty_bench.workloads: {exc}"
                for b in wanted}
    for bench in wanted:
        if bench not in found:
            missing[bench] = "not in poolparty_bench.workloads.WORKLOADS"
    return missing


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        print(list_everything())
        return 0

    from . import pythons, results

    missing = check_benches(args.bench)
    for bench, why in missing.items():
        log(f"skipping {bench}: {why}")
    benches = [b for b in args.bench if b not in missing]
    if not benches:
        log("nothing to run")
        return 2

    import_root = pythons.ImportRoot()
    try:
        interpreters, notes = gather_interpreters(args, import_root)
        for note in notes:
            log(f"NOTE: {note}")
        cells = plan_cells(benches, interpreters, args.mode, args.workers,
                           args)
        log(f"{len(cells)} cells on "
            + ", ".join(f"Python {i.label} ({i.path})" for i in interpreters))
        if args.dry_run:
            for cell in cells:
                print(f"{cell['bench']:15} py{cell['python']:9} "
                      f"{cell['mode']:16} w={cell['workers']:<3} "
                      f"scale={cell['scale']}")
            return 0
        if not cells:
            log("no cell to run with these options")
            return 2

        os.makedirs(args.out, exist_ok=True)
        machine = results.machine_info(interpreters)
        run_info = {
            "argv": sys.argv[1:] if argv is None else list(argv),
            "repeat": args.repeat,
            "workers": args.workers,
            "scales": {b: scale_for(b, args) for b in benches},
            "notes": notes,
        }
        json_path = os.path.join(args.out, "results.json")
        primary = interpreters[0].label

        def save(records):
            # Rewritten after every cell, so an interrupted run keeps what
            # it measured.
            done = results.add_speedups([dict(r) for r in records], primary)
            results.write_json(json_path, machine, done, run_info)

        unavailable = probe_unavailable(cells)
        runnable = sum((c["python"], c["mode"]) not in unavailable
                       for c in cells)
        log(f"{runnable} cells can run here, x {args.repeat} repeats = "
            f"{runnable * args.repeat} runs")
        started = time.monotonic()
        try:
            records = run_cells(cells, args, unavailable, on_record=save)
        except KeyboardInterrupt:
            if os.path.exists(json_path):
                log(f"interrupted: the cells done so far are in {json_path}")
            else:
                log("interrupted before the first cell was done")
            return 130
        records = results.add_speedups(records, primary)
        run_info["elapsed_s"] = round(time.monotonic() - started, 1)
        results.write_json(json_path, machine, records, run_info)
        results.write_csv(os.path.join(args.out, "results.csv"), records)

        print(results.format_table(records))
        api_table = results.format_api_table(records)
        if api_table:
            print("\n" + api_table)
        log(f"\nwrote {json_path} and results.csv "
            f"in {Progress.clock(run_info['elapsed_s'])}")
        if not args.no_charts:
            from . import charts

            subtitle = (f"{machine['cores_used_for_cpu_pct']} cores, "
                        f"Python {primary}, median of {args.repeat}")
            paths = charts.write_charts(records, args.out, subtitle)
            log(f"wrote {len(paths)} chart files to {args.out}")
        return 0
    finally:
        import_root.cleanup()


if __name__ == "__main__":
    sys.exit(main())
