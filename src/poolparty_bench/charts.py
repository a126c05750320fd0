"""Charts of a run, with matplotlib's Agg backend (no display needed).

Per workload, the original study's four panels: GIL contention, speedup,
CPU % and peak memory, one bar per mode, grouped by the number of workers.
Sequential modes ignore --workers and appear in every group.  A hatched bar
is a run whose results were wrong; a missing bar was not measured (no GIL
on a free-threaded build, a failed or unavailable cell).
"""

import math

from .modes import ALL_MODES, SEQUENTIAL_MODES

PANELS = {
    "gil": ("gil_contention_pct", "GIL contention, worst GIL (%)"),
    "speedup": ("speedup", "speedup vs. sequential (x)"),
    "cpu": ("cpu_pct", "CPU (% of all cores)"),
    "memory": ("peak_rss_mb", "peak memory (MB, RSS of the tree)"),
    "us": ("us_per_task", "time per task (us)"),
    "wall": ("wall_s_median", "pool start + stop (s)"),
}

# Which panels each kind of bench gets.
LAYOUTS = {
    "default": ("gil", "speedup", "cpu", "memory"),
    "overhead": ("gil", "us", "cpu", "memory"),
    "startup": ("wall", "cpu", "memory"),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def series_names(records):
    """The bars of a group: modes in a fixed order, one per Python."""
    pythons = []
    for rec in records:
        if rec["python"] not in pythons:
            pythons.append(rec["python"])
    # Name a bar by its Python only when two Pythons could share a mode.
    by_build = {}
    for rec in records:
        by_build.setdefault(rec["build"], set()).add(rec["python"])
    several = any(len(p) > 1 for p in by_build.values())

    order = {mode: i for i, mode in enumerate(ALL_MODES)}
    keys = sorted({(rec["mode"], rec["python"]) for rec in records},
                  key=lambda k: (order.get(k[0], len(order)),
                                 pythons.index(k[1])))
    return [(key, f"{key[0]} ({key[1]})" if several else key[0])
            for key in keys]


def groups(records):
    """The worker counts that form the groups of bars."""
    counts = sorted({rec["workers"] for rec in records
                     if rec["mode"] not in SEQUENTIAL_MODES
                     and rec["workers"] is not None})
    return counts or sorted({rec["workers"] for rec in records
                             if rec["workers"] is not None}) or [1]


def index_records(records):
    """Records by (bench, mode, python, workers), for find_record()."""
    return {(r["bench"], r["mode"], r["python"], r["workers"]): r
            for r in records}


def find_record(index, bench, key, workers):
    """The record behind one bar: KEY = (mode, python) in a worker group.

    A sequential mode has one record, which stands in every group.
    """
    mode, python = key
    if mode in SEQUENTIAL_MODES:
        for (b, m, p, _), rec in index.items():
            if (b, m, p) == (bench, mode, python):
                return rec
        return None
    return index.get((bench, mode, python, workers))


def _colors(names):
    plt = _pyplot()
    cmap = plt.get_cmap("tab20")
    modes = list(ALL_MODES)
    colors = {}
    for key, _ in names:
        index = modes.index(key[0]) if key[0] in modes else len(colors)
        colors[key] = cmap((2 * index) % 20 + (index >= 10))
    return colors


def _bar_panel(ax, records, names, colors, column, ylabel):
    index = index_records(records)
    bench = records[0]["bench"]
    worker_groups = groups(records)
    n = max(len(names), 1)
    width = 0.8 / n
    plotted = False
    for i, (key, label) in enumerate(names):
        xs, ys, hatches = [], [], []
        for g, workers in enumerate(worker_groups):
            rec = find_record(index, bench, key, workers)
            if rec is None or rec.get(column) is None:
                continue
            xs.append(g - 0.4 + width * (i + 0.5))
            ys.append(rec[column])
            hatches.append("" if rec["correct"] else "//")
        if not xs:
            continue
        plotted = True
        bars = ax.bar(xs, ys, width=width, color=colors[key], label=label,
                      edgecolor="black", linewidth=0.3)
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
    ax.set_xticks(range(len(worker_groups)))
    ax.set_xticklabels([f"{w} workers" for w in worker_groups])
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if column == "speedup":
        ax.axhline(1.0, color="black", linewidth=0.8)
    if not plotted:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center",
                transform=ax.transAxes, color="gray")


def _legend(fig, records, names, colors):
    """One entry per bar series, plain, plus one for hatched bars if any."""
    from matplotlib.patches import Patch

    shown = {(r["mode"], r["python"]) for r in records
             if r["wall_s_median"] is not None}
    handles = [Patch(facecolor=colors[key], edgecolor="black",
                     linewidth=0.3, label=label)
               for key, label in names if key in shown]
    if any(not r["correct"] and r["wall_s_median"] is not None
           for r in records):
        handles.append(Patch(facecolor="white", edgecolor="black",
                             hatch="//", label="wrong results"))
    if handles:
        fig.legend(handles=handles, loc="lower center",
                   ncol=min(len(handles), 6), bbox_to_anchor=(0.5, -0.02),
                   frameon=False)


def _save(fig, out_dir, stem):
    import os

    paths = []
    for ext in ("svg", "png"):
        path = os.path.join(out_dir, f"{stem}.{ext}")
        fig.savefig(path, dpi=110 if ext == "png" else None,
                    bbox_inches="tight")
        paths.append(path)
    return paths


def bench_chart(records, bench, out_dir, subtitle=""):
    """Write <bench>.svg and <bench>.png; return their paths."""
    plt = _pyplot()
    records = [r for r in records if r["bench"] == bench
               and r["status"] != "unavailable"]
    if not records:
        return []
    names = series_names(records)
    colors = _colors(names)
    layout = LAYOUTS.get(bench, LAYOUTS["default"])

    cols = 2
    rows = math.ceil(len(layout) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, 4.2 * rows),
                             squeeze=False)
    for ax, panel in zip(axes.flat, layout):
        column, ylabel = PANELS[panel]
        _bar_panel(ax, records, names, colors, column, ylabel)
    for ax in list(axes.flat)[len(layout):]:
        ax.set_visible(False)

    _legend(fig, records, names, colors)
    if any(r["build"] == "free-threaded" for r in records) and "gil" in layout:
        ax = axes.flat[layout.index("gil")]
        ax.set_title("(free-threaded builds have no GIL: no bar)",
                     fontsize=8, color="gray", loc="left")
    title = bench if not subtitle else f"{bench}  ({subtitle})"
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    paths = _save(fig, out_dir, bench)
    plt.close(fig)
    return paths


def summary_chart(records, out_dir, subtitle=""):
    """Speedups of every mode across workloads, one panel per worker count."""
    plt = _pyplot()
    records = [r for r in records if r["bench"] not in ("overhead", "startup")
               and r["status"] != "unavailable"]
    if not records:
        return []
    benches = []
    for rec in records:
        if rec["bench"] not in benches:
            benches.append(rec["bench"])
    names = series_names(records)
    colors = _colors(names)
    index = index_records(records)
    worker_groups = groups(records)

    fig, axes = plt.subplots(len(worker_groups), 1,
                             figsize=(max(8, 2.2 * len(benches)),
                                      3.8 * len(worker_groups)),
                             squeeze=False)
    width = 0.8 / max(len(names), 1)
    for ax, workers in zip(axes[:, 0], worker_groups):
        for i, (key, label) in enumerate(names):
            xs, ys, hatches = [], [], []
            for b, bench in enumerate(benches):
                rec = find_record(index, bench, key, workers)
                if rec is None or rec.get("speedup") is None:
                    continue
                xs.append(b - 0.4 + width * (i + 0.5))
                ys.append(rec["speedup"])
                hatches.append("" if rec["correct"] else "//")
            if xs:
                bars = ax.bar(xs, ys, width=width, color=colors[key],
                              label=label, edgecolor="black", linewidth=0.3)
                for bar, hatch in zip(bars, hatches):
                    bar.set_hatch(hatch)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(benches)))
        ax.set_xticklabels(benches)
        ax.set_ylabel("speedup (x)")
        ax.set_title(f"{workers} workers", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    _legend(fig, records, names, colors)
    title = "speedup vs. sequential"
    fig.suptitle(title if not subtitle else f"{title}  ({subtitle})")
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    paths = _save(fig, out_dir, "summary")
    plt.close(fig)
    return paths


def write_charts(records, out_dir, subtitle=""):
    """All charts of a run; return the paths written."""
    paths = []
    benches = []
    for rec in records:
        if rec["bench"] not in benches:
            benches.append(rec["bench"])
    for bench in benches:
        paths += bench_chart(records, bench, out_dir, subtitle)
    paths += summary_chart(records, out_dir, subtitle)
    return paths
