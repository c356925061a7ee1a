"""Run a command and measure its whole process tree: wall time, CPU time, memory peaks.

Used by ``benchmarks/full_scale.py``; Linux only (it reads ``/proc``).

How each figure is taken:

- **CPU seconds**: user + system time from ``os.wait4`` on the command's process. The
  kernel adds to a process's counts those of every child it has reaped, so the figure
  covers the main process and all the workers it waited for (a multiprocessing pool's,
  a DataLoader's). A process orphaned before it ends (re-parented to init) is not in it.
- **Memory**: a thread samples every process of the tree every ``interval`` seconds
  (the tree: the command's process and its descendants, found through
  ``/proc/PID/task/TID/children``, plus any process seen in the tree before that is
  still alive, in case it was orphaned). Per process it reads ``/proc/PID/status``
  (``RssAnon``: private anonymous pages, the memory the process itself allocated;
  ``RssFile``: file-backed resident pages, memory-mapped files the kernel can drop and
  read again; ``RssShmem``: shared memory, such as a DataLoader's hand-over buffers;
  ``VmHWM``: the kernel's own peak of the total RSS so far) and
  ``/proc/PID/smaps_rollup`` (``Pss``: each page divided by the number of processes
  that map it, so the PSS of a tree sums to the memory it really holds). Peaks are
  the largest values sampled, so a spike shorter than the interval can be missed,
  and so can a process that lives less than one interval. A forked worker's
  ``RssAnon`` includes the pages it inherited from its parent until either writes
  them (copy-on-write): they count in every process's ``RssAnon``, but once in PSS.
- **Kernel maximum RSS**: ``ru_maxrss`` from ``os.wait4``, the largest total RSS
  (anonymous + file + shared) any single process of the reaped tree reached, exact
  rather than sampled; a cross-check of the sampled peaks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

KIB = 1024
MIB = 1024 * 1024
#: The /proc/PID/status fields read per sample (values in kB).
STATUS_FIELDS = ("RssAnon", "RssFile", "RssShmem", "VmHWM")


@dataclass
class ProcessPeaks:
    """The peaks one process reached over the samples that saw it (bytes)."""

    pid: int
    cmdline: str
    is_main: bool
    anon: int = 0
    file: int = 0
    shmem: int = 0
    pss: int = 0
    hwm: int = 0
    samples: int = 0


@dataclass
class Measurement:
    """What :func:`run_measured` found for one command."""

    argv: list
    returncode: int
    wall_s: float
    cpu_s: float
    kernel_maxrss: int
    interval_s: float
    samples: int = 0
    peak_anon_sum: int = 0
    peak_pss_sum: int = 0
    processes: list = field(default_factory=list)

    def largest(self, attr: str, workers_only: bool = False) -> ProcessPeaks | None:
        """The process with the largest peak ``attr`` (``"anon"``, ``"file"``...), or None."""
        pool = [p for p in self.processes if not (workers_only and p.is_main)]
        return max(pool, key=lambda p: getattr(p, attr), default=None)

    def main(self) -> ProcessPeaks | None:
        """The command's own process (None if it ended before the first sample)."""
        return next((p for p in self.processes if p.is_main), None)


def _read(path: str) -> str | None:
    """A /proc file's text, or None once the process has gone (or may not be read)."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:  # FileNotFoundError, ProcessLookupError (ESRCH), PermissionError
        return None


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): tells a reused pid apart."""
    stat = _read(f"/proc/{pid}/stat")
    # The command name (field 2) may hold spaces and ')': split after its last ')'.
    return stat.rsplit(")", 1)[1].split()[19] if stat else None


def children(pid: int) -> list[int]:
    """The pids of a process's live children, from each of its threads' ``children`` file."""
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        text = _read(f"/proc/{pid}/task/{tid}/children")
        out.extend(int(c) for c in (text or "").split())
    return out


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it, parents before children."""
    order, todo = [], [root]
    while todo:
        pid = todo.pop()
        order.append(pid)
        todo.extend(children(pid))
    return order


def memory(pid: int) -> dict | None:
    """A process's RssAnon, RssFile, RssShmem, VmHWM and Pss in bytes, or None if it has gone."""
    status = _read(f"/proc/{pid}/status")
    if status is None:
        return None
    values = dict.fromkeys(STATUS_FIELDS, 0)
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        if name in values:
            values[name] = int(rest.split()[0]) * KIB
    values["Pss"] = 0
    for line in (_read(f"/proc/{pid}/smaps_rollup") or "").splitlines():
        if line.startswith("Pss:"):
            values["Pss"] = int(line.split()[1]) * KIB
            break
    return values


class TreeSampler(threading.Thread):
    """Samples the memory of a process tree every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peaks: dict[tuple, ProcessPeaks] = {}  # (pid, start time) -> peaks
        self.samples = self.peak_anon_sum = self.peak_pss_sum = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        self.sample()  # at once: a short command may end before the first interval
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        """Ask the thread to end, and wait until it has."""
        self._stop_event.set()
        self.join()

    def _tree(self) -> dict[tuple, int]:
        """The tree's processes now, keyed as :attr:`peaks` is, with their pids."""
        live = {}
        for pid in descendants(self.root):
            t = start_time(pid)
            if t is not None:
                live[(pid, t)] = pid
        for key in self.peaks:  # seen in the tree before, orphaned since, still alive
            if key not in live and start_time(key[0]) == key[1]:
                live[key] = key[0]
        return live

    def sample(self) -> None:
        """Read every process of the tree once and update the peaks."""
        anon_sum = pss_sum = 0
        for key, pid in self._tree().items():
            values = memory(pid)
            if values is None:
                continue
            p = self.peaks.get(key)
            if p is None:
                cmd = (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ").strip()
                p = self.peaks[key] = ProcessPeaks(pid, cmd, is_main=pid == self.root)
            p.anon = max(p.anon, values["RssAnon"])
            p.file = max(p.file, values["RssFile"])
            p.shmem = max(p.shmem, values["RssShmem"])
            p.pss = max(p.pss, values["Pss"])
            p.hwm = max(p.hwm, values["VmHWM"])
            p.samples += 1
            anon_sum += values["RssAnon"]
            pss_sum += values["Pss"]
        self.samples += 1
        self.peak_anon_sum = max(self.peak_anon_sum, anon_sum)
        self.peak_pss_sum = max(self.peak_pss_sum, pss_sum)


def run_measured(argv: list, stdout, stderr, interval: float = 0.2, env: dict | None = None) -> Measurement:
    """Run ``argv`` to its end and measure it (module docstring).

    Parameters
    ----------
    argv : list of str
        The command line.
    stdout, stderr : file objects
        Where the command's output goes (files, not pipes: a pipe nobody reads
        while the command runs could fill and stall it).
    interval : float
        Seconds between memory samples.
    env : dict, optional
        The command's environment (default: this process's).

    Returns
    -------
    Measurement
    """
    t0 = time.perf_counter()
    # A session of its own, so that an interrupted run can stop the command's whole tree.
    proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    sampler = TreeSampler(proc.pid, interval)
    sampler.start()
    try:
        # wait4 rather than proc.wait(): it also returns the tree's CPU times and max RSS.
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:  # KeyboardInterrupt: take the command's tree down with us
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        sampler.stop()
        raise
    wall = time.perf_counter() - t0
    sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    return Measurement(
        argv=list(argv), returncode=proc.returncode, wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime,
        kernel_maxrss=usage.ru_maxrss * KIB, interval_s=interval, samples=sampler.samples,
        peak_anon_sum=sampler.peak_anon_sum, peak_pss_sum=sampler.peak_pss_sum,
        processes=sorted(sampler.peaks.values(), key=lambda p: (not p.is_main, p.pid)))
