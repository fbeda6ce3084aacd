"""CPU thread defaults that share a machine instead of fighting over it (issue 29, part 6).

Measured on a 2-core Xeon VM, default recipe model (``an4/location_aware_x4_noaug``), batches of 8
(``scripts/bench_train.py --competing 1``): with torch's defaults (2 intra-op threads, OpenMP spinning while it
waits) a step took 0.42 s alone and 5-57 s while one or two other processes were busy (12-100x). An OpenMP
thread on a core that another process holds delays each of the step's thousands of parallel regions by a
scheduler time slice, while its partner spins. What helped, each measured on its own:

- as many intra-op threads as there are cores *not* busy with other processes (:func:`configure_threads`):
  1 thread here, 0.5-0.6 s/step with one other busy process, and at most 2x slower with two;
- OpenMP workers that sleep instead of spin while waiting (``OMP_WAIT_POLICY=PASSIVE``,
  :func:`set_passive_omp_env`): with 2 threads under load 3-50x faster than spinning, but on an idle
  machine 0.89 s/step against 0.42 (waking a sleeping worker costs; measured on a partly idle machine). It
  guards against load that starts after the thread count was chosen. libgomp (torch's OpenMP on Linux) reads
  it once, when ``import torch`` loads it: set after that import it changes nothing (``OMP_DISPLAY_ENV=VERBOSE``
  shows ``GOMP_SPINCOUNT = '300000'`` instead of ``'0'``), even before the first parallel operation.

Usage, at the very top of an entry point (before anything imports torch)::

    from asr.utils.threads import set_passive_omp_env
    set_passive_omp_env()
    ...
    configure_threads(cfg.threads)   # once, before the model runs

This module imports torch only inside :func:`configure_threads`, so importing it does not load libgomp.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

# Set only where the user has not set them. OMP_WAIT_POLICY is read by libgomp (torch's OpenMP on Linux),
# KMP_BLOCKTIME by Intel's libiomp (builds linked against it); the other library ignores each.
PASSIVE_OMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}

# Other processes' load (in cores) rounds up to a taken core when it exceeds a whole number by more than this:
# 0.2 busy leaves 2 of 2 cores free, 0.4 leaves 1. Rounding leans towards fewer threads because the costs are
# asymmetric: a thread on a busy core slowed training 12-100x (module docstring), one thread too few costs at
# most n / (n - 1) (2x on 2 cores).
SLACK = 0.3


def set_passive_omp_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Make OpenMP threads sleep, not spin, while they wait for work: sets ``OMP_WAIT_POLICY=PASSIVE`` and
    ``KMP_BLOCKTIME=0`` in ``environ`` (default ``os.environ``), each only if not already set there (the user's
    choice wins). Returns the variables it set.

    Only effective when called before ``import torch`` (OpenMP reads its environment when loaded); calling it
    later changes nothing in this process, though child processes started afterwards inherit the variables.
    """
    env = os.environ if environ is None else environ
    added = {k: v for k, v in PASSIVE_OMP_ENV.items() if k not in env}
    env.update(added)
    return added


def usable_cpus() -> int:
    """Cores this process may run on: its affinity mask (``os.sched_getaffinity``; ``os.cpu_count()`` where that
    is missing), capped by a cgroup v2 CPU quota (``/sys/fs/cgroup/cpu.max``, e.g. ``docker --cpus``)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def cpu_ticks(stat_text: str, cpus: set[int]) -> tuple[int, int]:
    """``(busy, total)`` clock ticks since boot summed over the cores ``cpus``, from the text of ``/proc/stat``
    (``cpuN`` lines: user nice system idle iowait irq softirq steal; idle and iowait are not busy; niced and
    stolen time are, since they take the core from us)."""
    busy = total = 0
    for line in stat_text.splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in vals[:8]]
            total += sum(v)
            busy += sum(v) - v[3] - v[4]
    return busy, total


def busy_cores(before: tuple[int, int], after: tuple[int, int], n_cpus: int, own_cpu_s: float, wall_s: float) -> float:
    """Cores kept busy by *other* processes between two :func:`cpu_ticks` readings ``before`` and ``after`` of
    ``n_cpus`` cores, ``wall_s`` seconds apart, during which this process used ``own_cpu_s`` CPU seconds.
    In ``[0, n_cpus]``; 0 when no tick passed."""
    d_busy, d_total = after[0] - before[0], after[1] - before[1]
    if d_total <= 0:
        return 0.0
    return min(float(n_cpus), max(0.0, n_cpus * d_busy / d_total - own_cpu_s / max(wall_s, 1e-9)))


def free_cores(n_cpus: int, busy: float, slack: float = SLACK) -> int:
    """Intra-op threads for ``n_cpus`` usable cores of which ``busy`` (cores, may be fractional) are taken by
    other processes: ``floor(n_cpus - busy + slack)``, clipped to ``[1, n_cpus]`` (see :data:`SLACK`)."""
    if n_cpus < 1 or busy < 0:
        raise ValueError(f"need n_cpus >= 1 and busy >= 0, got n_cpus={n_cpus}, busy={busy}")
    return max(1, min(n_cpus, math.floor(n_cpus - busy + slack)))


def sample_busy_cores(interval_s: float = 0.25) -> tuple[float, str]:
    """Cores of this process's affinity set busy with other processes, and how it was measured: a ``/proc/stat``
    sample over ``interval_s`` seconds (Linux; 100 ticks/s, so 0.25 s resolves about 0.04 core), else the 1-minute
    load average, which lags a minute behind and counts this process's own recent work (last resort)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        with open("/proc/stat") as f:
            before = cpu_ticks(f.read(), cpus)
        t0, c0 = time.perf_counter(), time.process_time()
        time.sleep(interval_s)
        with open("/proc/stat") as f:
            after = cpu_ticks(f.read(), cpus)
        return busy_cores(before, after, len(cpus), time.process_time() - c0, time.perf_counter() - t0), "/proc/stat"
    except OSError:
        pass
    try:
        return os.getloadavg()[0], "loadavg"
    except (OSError, AttributeError):
        return 0.0, "none"


def configure_threads(requested: int = 0, *, workers: int | None = None) -> dict:
    """Set torch's CPU threads for this process and return what was chosen.

    Parameters
    ----------
    requested : int
        Intra-op threads (``torch.set_num_threads``). ``> 0``: exactly that many. ``0`` (auto): the value of
        ``OMP_NUM_THREADS`` if the user set it, else the usable cores (affinity mask, cgroup quota) minus those
        busy with other processes right now (a 0.25 s ``/proc/stat`` sample, :func:`sample_busy_cores`), minus
        ``workers``, at least 1 (:func:`free_cores`). Decided once: load that starts later is not followed, which
        is what the passive OpenMP wait of :func:`set_passive_omp_env` softens.
    workers : int or None
        DataLoader worker processes the caller will run; in auto mode each takes one core from the intra-op
        threads. ``None``: the caller has not chosen, and 0 is recommended (features are held in memory, so
        workers only add start-up time, ``conf/data/an4.yaml``).

    Inter-op threads are set to 1 (the models do not ``torch.jit.fork``; a second pool only competes), unless
    parallel work has already started, when torch refuses (``RuntimeError``) and its count is left as is.

    Returns
    -------
    dict
        ``intra`` and ``interop`` (threads now in effect), ``workers`` (the recommended or given count),
        ``cpus`` (usable cores), ``busy`` (cores busy with other processes, ``None`` unless measured),
        ``reason`` (a short sentence), ``omp_wait_policy`` (``OMP_WAIT_POLICY`` as set, or ``None``).

    Raises
    ------
    ValueError
        ``requested`` or ``workers`` negative, or ``OMP_NUM_THREADS`` not a positive integer.
    """
    import torch

    if requested < 0 or (workers is not None and workers < 0):
        raise ValueError(f"threads and workers must be >= 0 (0 = auto), got threads={requested}, workers={workers}")
    cpus, busy = usable_cpus(), None
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if requested > 0:
        intra, reason = requested, f"requested {requested}"
    elif omp:
        first = omp.split(",")[0]
        if not first.isdigit() or int(first) < 1:
            raise ValueError(f"OMP_NUM_THREADS={omp!r} is not a positive integer; unset it or set e.g. OMP_NUM_THREADS=1")
        intra, reason = int(first), f"OMP_NUM_THREADS={omp}"
    else:
        busy, source = sample_busy_cores()
        intra = max(1, free_cores(cpus, busy) - (workers or 0))
        reason = f"auto: {cpus} usable cores, {busy:.2f} busy with other processes ({source}), {workers or 0} workers"
    torch.set_num_threads(intra)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # parallel work already started (or set before): keep torch's count
    out = {"intra": torch.get_num_threads(), "interop": torch.get_num_interop_threads(), "workers": 0 if workers is None else workers,
           "cpus": cpus, "busy": busy, "reason": reason, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    log.info("torch threads: %d intra-op, %d inter-op, %d DataLoader workers (%s; OMP_WAIT_POLICY=%s)",
             out["intra"], out["interop"], out["workers"], reason, out["omp_wait_policy"])
    return out
