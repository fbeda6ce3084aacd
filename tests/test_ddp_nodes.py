"""Many nodes on Lightning's own launchers: 2 torchrun "nodes" on localhost (gloo) train like 1 process.

Two ``torchrun --nnodes 2 --node_rank {0,1} --nproc_per_node 1`` invocations, one per simulated node, each running
``asr-train trainer=ddp trainer.devices=1 trainer.num_nodes=2`` through ``tests/ddp_node_worker.py`` (asr-train
that records every rank's batches, losses and its view of the job), are compared with one plain process that
accumulates 2 batches per optimiser step (``trainer.accumulate_grad_batches=2``): the same global batch per step.

Data: the 6 train_nodev utterances of ``mini_an4``, 1 per batch (``data.batch_size=1``, one duration bucket:
lhotse's DynamicCutSampler). That makes 6 batches an epoch, an even number, so each rank gets 3 whole batches: lhotse
hands rank r the r-th batch of every group of world-size batches drawn from the same seeded sequence. With an odd
number of batches the last, lone batch would instead be split between the ranks (``drop_last=False``), duplicating
cuts when it has fewer cuts than there are ranks, and the ranks' batches would no longer be the 1-process batches.

Everything random is off (no SpecAugment, no speed perturbation, dropout 0): the module reseeds the RNGs per rank,
so dropout masks could never match a 1-process run. Gradient clipping (5.0) stays on: it sees the all-reduced
gradient under DDP and the accumulated one in 1 process, the same gradient.

The slow test runs the same 2-node job as SLURM's ``srun`` would start it (``SLURM_*`` variables set by hand, no
``srun``, no SLURM): Lightning's SLURMEnvironment then takes ranks and nodes from those variables.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train import TINY

WORKER = Path(__file__).with_name("ddp_node_worker.py")
TIMEOUT_S = 300  # per job (all its processes together)
RUN = [
    *TINY, "model.encoder.dropout=0.0", "model.decoder.dropout=0.0", "augment=none", "data.speed_perturb=[]", "data.num_buckets=1",
    "data.batch_size=1", "data.num_workers=0", "threads=1", "seed=3", "deterministic=true", "keep_checkpoints=0", "trainer.max_epochs=1",
]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(root: Path, exp: Path) -> list[str]:
    return [f"data.root={root / 'data'}", f"data.dump={root / 'dump'}", "tokenizer=char", f"exp_dir={exp}", *RUN]


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for k in [k for k in env if k.startswith(("SLURM_", "TORCHELASTIC_", "PL_"))] + ["RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"]:
        env.pop(k, None)  # the test's own launcher decides the job's shape, even inside a SLURM or torchrun job
    return {**env, **extra}


def _run(jobs: list[tuple[list[str], dict[str, str]]], cwd: Path) -> None:
    """Start every (command, extra environment) at once (the nodes must meet) and wait for all, at most TIMEOUT_S.

    A process that fails or a timeout ends the job: the others are killed (each command runs in its own session,
    so torchrun's worker goes too) and the assertion message holds every process's stderr tail.
    """
    logs = [cwd / f"job{i}.stderr" for i in range(len(jobs))]
    procs = []
    for (cmd, extra), log in zip(jobs, logs):
        with open(log, "w") as f:
            procs.append(subprocess.Popen(cmd, cwd=cwd, env=_env(extra), stdout=subprocess.DEVNULL, stderr=f, start_new_session=True))
    deadline, timed_out = time.monotonic() + TIMEOUT_S, True
    try:
        while time.monotonic() < deadline:
            if all(p.poll() is not None for p in procs) or any(p.poll() not in (None, 0) for p in procs):
                timed_out = False
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    rcs = [f"{p.returncode} (timeout after {TIMEOUT_S} s)" if timed_out else p.returncode for p in procs]
    tails = "\n".join(f"--- {' '.join(map(str, p.args[:10]))} ... rc={rc}\n{log.read_text()[-8000:]}" for p, rc, log in zip(procs, rcs, logs))
    assert all(rc == 0 for rc in rcs), tails


def _records(d: Path) -> dict[int, list[dict]]:
    return {int(p.stem[4:]): [json.loads(x) for x in p.read_text().splitlines()] for p in sorted(d.glob("rank*.jsonl"))}


def _close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5, msg=lambda m, k=k: f"{what} {k}: {m}")


@pytest.fixture(scope="module")
def runs(mini_an4, tmp_path_factory):
    """The 2-node torchrun job and the 1-process reference, one epoch each: {"ddp"|"one": (records dir, exp dir)}."""
    tmp = tmp_path_factory.mktemp("ddp_nodes")
    port = _free_port()
    ddp, one = tmp / "ddp", tmp / "one"
    nodes = [
        ([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
          "--master_addr", "127.0.0.1", "--master_port", str(port), str(WORKER), str(ddp / "records"), *_args(mini_an4, ddp / "exp"), *DDP], {})
        for node in (0, 1)
    ]
    single = [sys.executable, str(WORKER), str(one / "records"), *_args(mini_an4, one / "exp"), "trainer.accumulate_grad_batches=2"]
    t0 = time.monotonic()
    _run(nodes, tmp)
    t1 = time.monotonic()
    _run([(single, {})], tmp)
    print(f"2-node torchrun job {t1 - t0:.1f} s, 1-process run {time.monotonic() - t1:.1f} s")
    return {"ddp": (ddp / "records", ddp / "exp"), "one": (one / "records", one / "exp")}


def _check_two_nodes(recs: dict[int, list[dict]], cluster: str, all_ids: list[str]) -> None:
    """Rank r = node r of a 2-node job, as the launcher and Lightning agree; 3 batches of 1 each, disjoint, covering."""
    assert sorted(recs) == [0, 1]
    for rank, rows in recs.items():
        for r in rows:
            assert (r["global_rank"], r["node_rank"], r["local_rank"], r["world_size"], r["num_nodes"]) == (rank, rank, 0, 2, 2)
            assert (r["sampler_rank"], r["sampler_world_size"]) == (rank, 2)  # lhotse's sampler was told the job's shape
            assert r["cluster"] == cluster
    ids = {rank: [i for r in rows for i in r["ids"]] for rank, rows in recs.items()}
    assert [len(rows) for rows in recs.values()] == [3, 3] and [len(v) for v in ids.values()] == [3, 3]  # 6 batches of 1
    assert not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(all_ids)


def test_two_nodes_see_disjoint_batches_covering_the_epoch(runs, mini_an4):
    from asr.data.lhotse_data import load_cuts

    recs = _records(runs["ddp"][0])
    _check_two_nodes(recs, "TorchElasticEnvironment", [c.id for c in load_cuts(mini_an4 / "dump/train_nodev/cuts.jsonl.gz")])
    for rank, rows in recs.items():  # torchrun's view: node = GROUP_RANK
        assert all((r["env"]["GROUP_RANK"], r["env"]["RANK"], r["env"]["WORLD_SIZE"]) == (str(rank), str(rank), "2") for r in rows)
    ckpt = torch.load(runs["ddp"][1] / "checkpoints/last.ckpt", weights_only=True)  # written by rank 0
    assert ckpt["global_step"] == 3  # 3 optimiser steps of 2 ranks x 1 utterance


def test_two_node_step_equals_one_process_step_on_the_same_global_batch(runs):
    ddp_recs, one_recs = _records(runs["ddp"][0]), _records(runs["one"][0])
    one = one_recs[0]
    assert sorted(one_recs) == [0] and len(one) == 6 and all(r["world_size"] == 1 for r in one)
    # the same global batches: 1-process batches 2k and 2k+1 are batch k of rank 0 and of rank 1
    for k in range(3):
        for rank in (0, 1):
            d, o = ddp_recs[rank][k], one[2 * k + rank]
            assert d["ids"] == o["ids"], (d, o)
            assert d["global_step"] == o["global_step"] == d["batch_idx"] == k
            assert d["lr"] == pytest.approx(o["lr"], rel=1e-12)  # the same LR schedule (3 optimiser steps an epoch)
            # step 0: the same initial weights; steps 1-2: the weights after the earlier (compared) steps
            assert d["loss"] == pytest.approx(o["loss"], rel=1e-5, abs=1e-5), (d, o)

    step0, step1 = ({n: torch.load(runs[n][0] / f, weights_only=True) for n in ("ddp", "one")} for f in ("step0.pt", "step1.pt"))
    assert all(torch.equal(step0["ddp"][k], step0["one"][k]) for k in step0["one"])  # the same seeded initial weights
    assert sum(not torch.equal(step0["one"][k], step1["one"][k]) for k in step0["one"]) > len(step0["one"]) // 2  # the step moved them
    _close(step1["ddp"], step1["one"], "after step 1:")  # the one optimiser step
    last = {n: torch.load(runs[n][1] / "checkpoints/last.ckpt", weights_only=True) for n in ("ddp", "one")}
    assert last["ddp"]["global_step"] == last["one"]["global_step"] == 3
    _close(last["ddp"]["state_dict"], last["one"]["state_dict"], "after the epoch (3 steps):")
    for a, b in zip(last["ddp"]["optimizer_states"][0]["state"].values(), last["one"]["optimizer_states"][0]["state"].values()):
        _close(a, b, "Adam state:")


@pytest.mark.slow
def test_slurm_srun_environment_two_nodes_same_as_torchrun(runs, mini_an4, tmp_path):
    """The job as ``srun --nodes 2 --ntasks-per-node 1`` starts it: one task per node, ranks in SLURM_PROCID/LOCALID/
    NODEID, the master in SLURM_NODELIST (MASTER_PORT given: Lightning's default derives it from SLURM_JOB_ID).
    Simulated: no srun, no SLURM; what it checks is Lightning's side (SLURMEnvironment) with asr-train."""
    from asr.data.lhotse_data import load_cuts

    port, rec, exp = _free_port(), tmp_path / "records", tmp_path / "exp"
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "asr", "SLURM_JOB_ID": "4242",
             "SLURM_NODELIST": "127.0.0.1", "MASTER_PORT": str(port)}
    tasks = [([sys.executable, str(WORKER), str(rec), *_args(mini_an4, exp), *DDP], {**slurm, "SLURM_PROCID": str(r), "SLURM_LOCALID": "0", "SLURM_NODEID": str(r)})
             for r in (0, 1)]
    _run(tasks, tmp_path)
    recs = _records(rec)
    _check_two_nodes(recs, "SLURMEnvironment", [c.id for c in load_cuts(mini_an4 / "dump/train_nodev/cuts.jsonl.gz")])
    ref = _records(runs["ddp"][0])
    for rank in (0, 1):  # the torchrun job's batches and losses, rank by rank
        assert [x["ids"] for x in recs[rank]] == [x["ids"] for x in ref[rank]]
        assert [x["loss"] for x in recs[rank]] == pytest.approx([x["loss"] for x in ref[rank]], rel=1e-5, abs=1e-5)
    got, want = (torch.load(e / "checkpoints/last.ckpt", weights_only=True) for e in (exp, runs["one"][1]))
    assert got["global_step"] == 3
    _close(got["state_dict"], want["state_dict"], "SLURM job vs 1 process:")
