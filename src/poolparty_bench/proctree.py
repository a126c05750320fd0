"""Run a command and watch the memory and CPU of its whole process tree.

A pool of subprocesses spreads its memory over many processes, and a pool
of threads or subinterpreters keeps it in one, so peak memory is taken as
the peak, over samples, of the SUM of the resident set sizes of the process
and all its descendants.  Samples are taken every SAMPLE_INTERVAL_S.

This runs in the driver (it needs psutil), never in the cell.
"""

import os
import signal
import subprocess
import time

import psutil

SAMPLE_INTERVAL_S = 0.025

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

    def __init__(self, pid):
        self.pid = pid
        self.peak_rss_bytes = 0
        self.samples = 0
        self._last_cpu = {}
        self._root = None

    def sample(self):
        """Take one sample; return False once the root process is gone."""
        try:
            if self._root is None:
                self._root = psutil.Process(self.pid)
            procs = [self._root] + self._root.children(recursive=True)
        except psutil.Error:
            return False
        rss = 0
        for proc in procs:
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
                 wall_s, timed_out):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.peak_rss_bytes = peak_rss_bytes
        self.cpu_s = cpu_s
        self.wall_s = wall_s
        self.timed_out = timed_out


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
                   timed_out)


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
