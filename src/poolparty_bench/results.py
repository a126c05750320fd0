"""From the repeats of each cell to results.json, results.csv and a table.

Pure functions on plain dicts, so that tests can feed them synthetic runs.
"""

import csv
import datetime
import json
import os
import platform
import statistics

# Columns of results.csv, and the key order of each record in results.json.
COLUMNS = (
    "python",
    "build",
    "bench",
    "mode",
    "workers",
    "tasks",
    "repeats",
    "wall_s_min",
    "wall_s_median",
    "wall_s_max",
    "speedup",
    "cpu_pct",
    "peak_rss_mb",
    "gil_contention_pct",
    "correct",
    "us_per_task",
    "cpu_us_per_task",
    "gil_workers_pct",
    "scale",
    "status",
    "error",
    "note",
    "others_cpu_pct_max",
    "steal_pct_max",
    "python_path",
    "warm_speedup",
)

# Workloads whose cells time a map on a warm pool (WARM_UP): their
# records also get warm_speedup, from that map's time.
WARM_BENCHES = ("data_floats", "data_ints", "data_records", "data_text",
                "data_blob")

# status values
OK = "ok"
FAILED = "failed"
UNAVAILABLE = "unavailable"


def _mean_sampled(values):
    """Mean of the workers' figures that were sampled (a worker that never
    ran while the sampler looked has None), or None."""
    values = [v for v in values or () if v is not None]
    return statistics.fmean(values) if values else None


def _worst_gil(gil):
    """The most contended GIL of one run: the main one or a worker's."""
    values = [gil.get("main")] + list(gil.get("workers") or [])
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _max(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(cell, runs, cores):
    """Fold the repeats of one cell into its record (speedup left None).

    CELL has python, build, bench, mode, workers, scale, python_path.  Each
    run is a dict with wall_s, cpu_s, tasks, correct, peak_rss_bytes and
    gil ({"main", "workers"}), or with error when that repeat failed.
    """
    record = dict.fromkeys(COLUMNS)
    for key in ("python", "build", "bench", "mode", "workers", "scale",
                "python_path"):
        record[key] = cell.get(key)
    record["repeats"] = len(runs)

    good = [run for run in runs if "error" not in run]
    errors = [run["error"] for run in runs if "error" in run]
    notes = sorted({run["note"] for run in runs if run.get("note")})

    if good:
        walls = sorted(run["wall_s"] for run in good)
        median = statistics.median(walls)
        record["wall_s_min"] = walls[0]
        record["wall_s_median"] = median
        record["wall_s_max"] = walls[-1]
        record["tasks"] = good[0]["tasks"]
        record["cpu_pct"] = _median(
            100.0 * run["cpu_s"] / (run["wall_s"] * cores)
            if run.get("cpu_s") is not None and run["wall_s"] > 0 else None
            for run in good)
        peaks = [run.get("peak_rss_bytes") for run in good]
        peaks = [p for p in peaks if p]
        record["peak_rss_mb"] = max(peaks) / 2**20 if peaks else None
        record["gil_contention_pct"] = _median(
            _worst_gil(run.get("gil") or {}) for run in good)
        record["gil_workers_pct"] = _median(
            _mean_sampled((run.get("gil") or {}).get("workers"))
            for run in good)
        if record["tasks"]:
            # Time per task of the map alone, on a pool already started
            # (cells measure map_s); older results only have the wall.
            map_s = _median(run.get("map_s") for run in good)
            record["us_per_task"] = 1e6 * (
                map_s if map_s is not None else median) / record["tasks"]
            # CPU of the whole process (every thread and interpreter)
            # over the map alone: what the call costs the machine, which
            # a busy machine's scheduling shifts less than the wall.
            map_cpu_s = _median(run.get("map_cpu_s") for run in good)
            if map_cpu_s is not None:
                record["cpu_us_per_task"] = (1e6 * map_cpu_s
                                             / record["tasks"])
        # The worst noise any repeat ran under (percent of the machine).
        record["others_cpu_pct_max"] = _max(
            run.get("others_cpu_pct") for run in good)
        record["steal_pct_max"] = _max(run.get("steal_pct") for run in good)
        # Say why the GIL was not measured; a measured figure needs no note.
        notes += sorted({gil.get("note") or "" for gil in
                         ((run.get("gil") or {}) for run in good)
                         if gil.get("main") is None} - {""})

    record["correct"] = bool(good) and not errors and all(
        run["correct"] for run in good)
    if errors:
        record["status"] = FAILED
        record["error"] = errors[0]
    else:
        record["status"] = OK
    if notes:
        record["note"] = "; ".join(notes)
    return record


def unavailable_record(cell, reason):
    """The record of a cell that could not run at all on its Python."""
    record = dict.fromkeys(COLUMNS)
    for key in ("python", "build", "bench", "mode", "workers", "scale",
                "python_path"):
        record[key] = cell.get(key)
    record["repeats"] = 0
    record["correct"] = False
    record["status"] = UNAVAILABLE
    record["error"] = f"unavailable: {reason}"
    return record


def baseline_key(record, primary_python):
    """Which sequential run RECORD's speedup is measured against.

    A default build's own sequential run; for a free-threaded build, the
    sequential run of the driver's (default-build) Python, as in the
    original study, where nogil-sequential itself is compared to it.
    """
    python = record["python"]
    if record["build"] != "default":
        python = primary_python
    return (python, record["bench"])


def add_speedups(records, primary_python):
    """Set speedup = sequential median / this median, in place."""
    baselines = {}
    for rec in records:
        if (rec["mode"] == "sequential" and rec["status"] == OK
                and rec["wall_s_median"]):
            baselines[(rec["python"], rec["bench"])] = rec["wall_s_median"]
    for rec in records:
        base = baselines.get(baseline_key(rec, primary_python))
        if base is None:
            # An extra default build that ran no sequential row of its own
            # is still compared with the driver's.
            base = baselines.get((primary_python, rec["bench"]))
        if base and rec["wall_s_median"]:
            rec["speedup"] = base / rec["wall_s_median"]
    # Workloads that warm their pools up (WARM_UP) compare the maps alone.
    warm = {(rec["python"], rec["bench"]): rec["us_per_task"]
            for rec in records
            if rec["mode"] == "sequential" and rec["status"] == OK
            and rec["bench"] in WARM_BENCHES and rec["us_per_task"]}
    for rec in records:
        if rec["bench"] in WARM_BENCHES and rec["us_per_task"]:
            base = (warm.get(baseline_key(rec, primary_python))
                    or warm.get((primary_python, rec["bench"])))
            if base:
                rec["warm_speedup"] = base / rec["us_per_task"]
    return records


def machine_info(interpreters):
    """What the results were measured on."""
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(
            timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cores_used_for_cpu_pct": usable_cores(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "os": _os_name(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "pythons": [interp.describe() for interp in interpreters],
    }
    return info


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib():
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def _os_name():
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def write_json(path, machine, records, run=None):
    doc = {"machine": machine, "results": records}
    if run is not None:
        doc["run"] = run
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def write_csv(path, records):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for rec in records:
            writer.writerow({k: "" if v is None else v
                             for k, v in rec.items()})


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def _seconds(value):
    """Seconds with about three significant digits."""
    if value is None:
        return "-"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    if value >= 0.01:
        return f"{value:.3f}"
    return f"{value:.5f}"


def format_table(records):
    """The terminal table: one line per cell that ran, by workload.

    Cells that could not run are not rows: a footer says once per Python
    and mode why not.  Failed cells are rows, and the footer says why.
    """
    ran = [rec for rec in records if rec["status"] != UNAVAILABLE]
    show_us = any(rec["bench"] == "overhead" and rec["us_per_task"]
                  for rec in ran)
    show_warm = any(rec.get("warm_speedup") for rec in ran)
    header = ["bench", "python", "mode", "w", "tasks", "median s",
              "min-max s", "speedup", "cpu %", "peak MB", "gil %", "ok"]
    if show_warm:
        header.insert(8, "warm x")
    if show_us:
        header.insert(7, "us/task")
    rows = []
    for rec in ran:
        if rec["status"] == FAILED:
            ok = "FAIL"
        else:
            ok = "yes" if rec["correct"] else "WRONG"
        spread = "-"
        if rec["wall_s_min"] is not None:
            spread = (f"{_seconds(rec['wall_s_min'])}-"
                      f"{_seconds(rec['wall_s_max'])}")
        row = [rec["bench"], rec["python"], rec["mode"],
               _fmt(rec["workers"], "d"), _fmt(rec["tasks"], "d"),
               _seconds(rec["wall_s_median"]), spread,
               _fmt(rec["speedup"], ".2f"), _fmt(rec["cpu_pct"], ".0f"),
               _fmt(rec["peak_rss_mb"], ".0f"),
               _fmt(rec["gil_contention_pct"], ".1f"), ok]
        if show_warm:
            row.insert(8, _fmt(rec.get("warm_speedup"), ".2f"))
        if show_us:
            us = rec["us_per_task"] if rec["bench"] == "overhead" else None
            row.insert(7, _fmt(us, ".2f" if us is not None and us < 10
                               else ".1f"))
        rows.append(row)

    widths = [max(len(str(r[i])) for r in [header] + rows)
              for i in range(len(header))]
    numeric = set(range(3, len(header) - 1))

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in numeric else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), line(["-" * w for w in widths])]
    previous = None
    for rec, row in zip(ran, rows):
        if previous is not None and rec["bench"] != previous:
            out.append("")
        previous = rec["bench"]
        out.append(line(row))

    footer = []
    said = set()
    for rec in records:
        if rec["status"] == UNAVAILABLE:
            key = (rec["python"], rec["mode"], rec["error"])
            if key not in said:
                said.add(key)
                footer.append(f"{rec['mode']} on Python {rec['python']}: "
                              f"{rec['error']}")
        elif rec["status"] == FAILED:
            footer.append(f"{rec['bench']} {rec['mode']} on Python "
                          f"{rec['python']}, {rec['workers']} workers: "
                          f"failed: {rec['error']}")
    if footer:
        out.append("")
        out.extend(footer)
    return "\n".join(text.rstrip() for text in out)


def format_api_table(records):
    """The overhead workload's API paths side by side, as a Markdown table.

    One row per API call of modes.API_PAIRS that ran on both our pool and
    the stdlib's threads, per Python and worker count: each one's median
    microseconds per task and ours as a fraction of theirs, then the
    same for the CPU time of the whole process per task.  "" when no
    pair ran.
    """
    from .modes import API_PAIRS

    found = {}
    for rec in records:
        if (rec["bench"] == "overhead" and rec["status"] == "ok"
                and rec["us_per_task"] is not None):
            found[(rec["python"], rec["workers"], rec["mode"])] = rec
    groups = sorted({(python, workers) for python, workers, _ in found})
    out = []
    for python, workers in groups:
        rows, tasks = [], None
        for label, ours, threads in API_PAIRS:
            a = found.get((python, workers, ours))
            b = found.get((python, workers, threads))
            if a is None or b is None:
                continue
            ratio = a["us_per_task"] / b["us_per_task"]
            tasks = a["tasks"]
            cpu = "-"
            if a["cpu_us_per_task"] and b["cpu_us_per_task"]:
                cpu = (f"{a['cpu_us_per_task']:.2f} / "
                       f"{b['cpu_us_per_task']:.2f} "
                       f"({a['cpu_us_per_task'] / b['cpu_us_per_task']:.2f})")
            rows.append(f"| {label} | {a['us_per_task']:.2f} "
                        f"| {b['us_per_task']:.2f} | {ratio:.2f} | {cpu} |")
        if not rows:
            continue
        if out:
            out.append("")
        out.append(f"Python {python}, {workers} workers, "
                   f"{tasks} no-op tasks (us per task, medians):")
        out.append("")
        out.append("| call | poolparty | stdlib threads | ratio "
                   "| CPU us, ours / theirs (ratio) |")
        out.append("|---|---|---|---|---|")
        out.extend(rows)
    return "\n".join(out)
