"""Run a command and watch the memory and CPU of its whole process tree.

A pool of subprocesses spreads its memory over many processes, and a pool
of threads or subinterpreters keeps it in one, so peak memory is taken as
the peak, over samples, of the SUM of the resident set sizes of the process
and all its descendants.  Samples are taken every SAMPLE_INTERVAL_S.

The sampler shares the machine with what it measures, so it must be cheap:
finding the descendants means reading the stat file of every process on
the machine (0.5 ms of CPU here, 2 % of a core at one scan per sample,
taken from the pooled runs that need every core).  So the tree is scanned
every CHILD_RESCAN_EVERY samples, and the processes found are read in
between (20 us each).  A process is counted from the scan after it starts;
the pools measured here start their processes once and keep them.

Alongside, the machine's CPU counters (/proc/stat on Linux) say how much
CPU went to everything outside the command, and how much the hypervisor
took (steal): the noise a run was measured under.

This runs in the driver (it needs psutil), never in the cell.
"""

import os
import signal
import subprocess
import time

import psutil

SAMPLE_INTERVAL_S = 0.025

# Samples between two scans of the process tree (0.2 s apart).
CHILD_RESCAN_EVERY = 8

# How long processes left behind by a finished command may linger (the
# resource tracker of multiprocessing, say) before they are killed.
LEFTOVER_GRACE_S = 2.0


class ProcessTreeSampler:
    """Samples of one process and its descendants.

    peak_rss_bytes is the largest sum of RSS seen in one sample.  cpu_s adds
    up, over every process ever seen, the last user + system time read from
    it, so a child that exited between samples still counts with what it
    had used when last seen.
    """

    def __init__(self, pid, rescan_every=CHILD_RESCAN_EVERY):
        self.pid = pid
        self.peak_rss_bytes = 0
        self.samples = 0
        self.rescan_every = rescan_every
        self._last_cpu = {}
        self._root = None
        self._procs = []

    def sample(self):
        """Take one sample; return False once the root process is gone."""
        try:
            if self._root is None:
                self._root = psutil.Process(self.pid)
            if self.samples % self.rescan_every == 0:
                self._procs = ([self._root]
                               + self._root.children(recursive=True))
        except psutil.Error:
            return False
        rss = 0
        for proc in self._procs:
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
            except psutil.Error:  # exited since children() listed it
                continue
            self._last_cpu[proc.pid] = times.user + times.system
        self.samples += 1
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        return True

    @property
    def cpu_s(self):
        return sum(self._last_cpu.values())


class Outcome:
    """What run_sampled() saw: exit code, output, memory, CPU, time."""

    def __init__(self, returncode, stdout, stderr, peak_rss_bytes, cpu_s,
                 wall_s, timed_out, machine=None):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.peak_rss_bytes = peak_rss_bytes
        self.cpu_s = cpu_s
        self.wall_s = wall_s
        self.timed_out = timed_out
        # MachineCpu over the run, or None where /proc/stat is missing.
        self.machine = machine


class MachineCpu:
    """The whole machine's CPU counters (/proc/stat), in seconds.

    busy_s is all CPU time spent running anything (user, nice, system,
    interrupts); steal_s is time the hypervisor gave this machine's CPUs to
    someone else.  Subtracting two readings gives what happened in between.
    """

    def __init__(self, busy_s, steal_s):
        self.busy_s = busy_s
        self.steal_s = steal_s

    @classmethod
    def read(cls):
        """The counters now, or None where the kernel does not give them."""
        try:
            with open("/proc/stat", "rb") as f:
                fields = f.readline().split()
        except OSError:
            return None
        if len(fields) < 9 or fields[0] != b"cpu":
            return None
        tick = os.sysconf("SC_CLK_TCK")
        # cpu user nice system idle iowait irq softirq steal ...
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(v) / tick for v in fields[1:9])
        return cls(user + nice + system + irq + softirq, steal)

    def __sub__(self, earlier):
        return MachineCpu(self.busy_s - earlier.busy_s,
                          self.steal_s - earlier.steal_s)


def run_sampled(cmd, *, env=None, cwd=None, timeout=None,
                interval=SAMPLE_INTERVAL_S):
    """Run CMD to completion while sampling its process tree.

    The command gets a session of its own, so that on a timeout it and
    everything it started can be killed by its process group, and nothing
    else.  Its output goes to temporary files, not pipes, so that a chatty
    command cannot block while this loop samples.
    """
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out,
                                stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        sampler = ProcessTreeSampler(proc.pid)
        machine_start = MachineCpu.read()
        start = time.monotonic()
        timed_out = False
        status = rusage = None
        try:
            while True:
                sampler.sample()
                # wait4() rather than proc.wait(): it also returns the
                # child's rusage, whose ru_maxrss is a floor for the peak
                # when the run is shorter than one sampling interval.
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if (timeout is not None and not timed_out
                        and time.monotonic() - start > timeout):
                    timed_out = True
                    _kill_group(proc.pid)
                time.sleep(interval)
        except BaseException:
            # Ctrl-C reaches only the driver (the command has its own
            # session): take the command down with it.
            _kill_group(proc.pid)
            proc.wait()
            raise
        wall = time.monotonic() - start
        machine_end = MachineCpu.read()
        machine = (machine_end - machine_start
                   if machine_start and machine_end else None)
        proc.returncode = os.waitstatus_to_exitcode(status)
        _reap_leftovers(proc.pid)

        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")

    # ru_maxrss is in KiB on Linux.
    peak = max(sampler.peak_rss_bytes, rusage.ru_maxrss * 1024)
    cpu = max(sampler.cpu_s, rusage.ru_utime + rusage.ru_stime)
    return Outcome(proc.returncode, stdout, stderr, peak, cpu, wall,
                   timed_out, machine)


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap_leftovers(pgid):
    """Kill what the finished command left running in its process group."""
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        if time.monotonic() > deadline:
            _kill_group(pgid)
            return
        time.sleep(0.05)
