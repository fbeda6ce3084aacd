"""asr.utils.threads: thread defaults for a shared CPU (issue 29, part 6). Behaviour only, no timings."""

from __future__ import annotations

import os

import pytest
import torch

from asr.utils import threads as T


@pytest.fixture
def restore_threads(monkeypatch):
    """Put torch's intra-op threads back after a test, and start from no OMP_NUM_THREADS."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


STAT = """cpu  300 0 100 500 0 0 0 0 0 0
cpu0 100 0 50 250 0 0 0 0 0 0
cpu1 200 10 50 130 10 0 0 0 0 0
intr 12345 0 0
ctxt 999
"""


def test_cpu_ticks_reads_the_chosen_cores_of_proc_stat():
    assert T.cpu_ticks(STAT, {0}) == (150, 400)
    assert T.cpu_ticks(STAT, {1}) == (260, 400)  # nice counts as busy, iowait as idle
    assert T.cpu_ticks(STAT, {0, 1}) == (410, 800)  # the aggregate "cpu" line is not counted again
    assert T.cpu_ticks(STAT, {7}) == (0, 0)


def test_busy_cores_subtracts_own_use_and_stays_in_range():
    # 2 cores, 100 ticks passed, 50 of them busy: one core's worth
    assert T.busy_cores((0, 0), (50, 100), 2, own_cpu_s=0.0, wall_s=0.25) == pytest.approx(1.0)
    # ... of which this process used 0.125 s in 0.25 s: half a core is ours
    assert T.busy_cores((0, 0), (50, 100), 2, own_cpu_s=0.125, wall_s=0.25) == pytest.approx(0.5)
    assert T.busy_cores((0, 0), (0, 100), 2, own_cpu_s=0.1, wall_s=0.25) == 0.0  # never negative
    assert T.busy_cores((5, 10), (5, 10), 2, own_cpu_s=0.0, wall_s=0.25) == 0.0  # no tick passed


@pytest.mark.parametrize("n, busy, want", [(2, 0.0, 2), (2, 0.05, 2), (2, 0.25, 2), (2, 0.5, 1), (2, 1.0, 1), (2, 2.0, 1),
                                           (2, 5.0, 1), (8, 2.9, 5), (8, 0.0, 8), (1, 0.0, 1)])
def test_free_cores(n, busy, want):
    assert T.free_cores(n, busy) == want


def test_free_cores_rejects_nonsense():
    with pytest.raises(ValueError, match="n_cpus"):
        T.free_cores(0, 0.0)
    with pytest.raises(ValueError, match="busy"):
        T.free_cores(2, -1.0)


def test_explicit_request_is_honoured(restore_threads):
    out = T.configure_threads(3)
    assert out["intra"] == 3 == torch.get_num_threads()
    assert out["reason"] == "requested 3" and out["busy"] is None and out["workers"] == 0


def test_omp_num_threads_is_the_users_choice_in_auto_mode(restore_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    out = T.configure_threads(0)
    assert out["intra"] == 3 == torch.get_num_threads() and "OMP_NUM_THREADS" in out["reason"]
    assert T.configure_threads(1)["intra"] == 1  # an explicit request still wins
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        T.configure_threads(0)


def test_auto_stays_within_the_usable_cores(restore_threads, monkeypatch):
    out = T.configure_threads(0)
    assert 1 <= out["intra"] <= len(os.sched_getaffinity(0)) and out["intra"] == torch.get_num_threads()
    assert out["reason"].startswith("auto") and 0.0 <= out["busy"] <= out["cpus"]
    # a machine that looks fully busy still gets one thread; workers take cores from the intra-op threads
    monkeypatch.setattr(T, "sample_busy_cores", lambda: (99.0, "test"))
    assert T.configure_threads(0)["intra"] == 1
    monkeypatch.setattr(T, "sample_busy_cores", lambda: (0.0, "test"))
    monkeypatch.setattr(T, "usable_cpus", lambda: 4)
    out = T.configure_threads(0, workers=1)
    assert out["intra"] == 3 and out["workers"] == 1


def test_negative_arguments_are_errors():
    with pytest.raises(ValueError, match="threads"):
        T.configure_threads(-1)
    with pytest.raises(ValueError, match="workers"):
        T.configure_threads(0, workers=-2)


def test_interop_threads_are_one_or_left_alone(restore_threads):
    # this process has run parallel work already (other tests), so torch may refuse: either way no error
    out = T.configure_threads(1)
    assert out["interop"] == torch.get_num_interop_threads() >= 1


def test_passive_env_never_overrides_the_user():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert T.set_passive_omp_env(env) == {"KMP_BLOCKTIME": "0"}
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "KMP_BLOCKTIME": "0"}
    env = {}
    assert T.set_passive_omp_env(env) == T.PASSIVE_OMP_ENV == env
    assert T.set_passive_omp_env(env) == {}


def test_module_does_not_load_torch():
    """Importable at the top of an entry point before torch: OpenMP reads OMP_WAIT_POLICY when torch loads it."""
    import subprocess
    import sys

    code = "import sys, asr.utils.threads as t; t.set_passive_omp_env(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_usable_cpus_within_affinity():
    assert 1 <= T.usable_cpus() <= len(os.sched_getaffinity(0))
