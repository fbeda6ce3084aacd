"""Batches sized by audio (``data.max_duration``), warm-up in epochs, and the Xavier init option (issue 11)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from asr.cli.train import batch_frame_budget
from asr.data.dataset import LengthBucketBatchSampler
from asr.features.fbank import FbankOptions


@pytest.mark.parametrize(
    "data, budget",
    [({"max_frames": 0, "max_duration": 0}, 0), ({"max_frames": 0, "max_duration": 200}, 20000),
     ({"max_frames": 5000, "max_duration": 200}, 5000), ({"max_frames": 30000, "max_duration": 2.5}, 250), ({}, 0)],
)
def test_batch_frame_budget(data, budget):
    assert batch_frame_budget(OmegaConf.create(data), FbankOptions()) == budget


@pytest.mark.parametrize("data", [{"max_duration": -1}, {"max_frames": -3}, {"max_duration": float("nan")}])
def test_batch_frame_budget_rejects_bad_values(data):
    with pytest.raises(ValueError, match="must be >= 0"):
        batch_frame_budget(OmegaConf.create(data), FbankOptions())


def test_duration_batches_on_real_features_cover_every_utterance_within_budget(real_feats):
    """Dynamic batches over real fbank: every utterance exactly once per epoch, padded frames within the budget
    (but for an utterance longer than the budget, alone), short utterances in bigger batches, all ranks alike."""
    lengths = [real_feats[k].shape[0] for k in sorted(real_feats)] * 5  # 30 utterances, 148-208 frames
    budget = 600
    seen_sizes = set()
    for rank in range(2):
        s = LengthBucketBatchSampler(lengths, batch_size=1000, max_frames=budget, shuffle=True, seed=3, num_replicas=2, rank=rank)
        s.set_epoch(4)
        batches = [[i for i, _ in b] for b in s]
        assert len(batches) == len(s)
        for b in batches:
            assert len(b) * max(lengths[i] for i in b) <= budget or len(b) == 1
            seen_sizes.add(len(b))
    full = LengthBucketBatchSampler(lengths, batch_size=1000, max_frames=budget, shuffle=True, seed=3, num_replicas=1, rank=0)
    full.set_epoch(4)
    assert sorted(i for b in full for i, _ in b) == list(range(len(lengths)))
    assert max(seen_sizes) == 4 and 2 in seen_sizes  # 4 x 148 but only 2 x 208: more short ones per batch
    other = LengthBucketBatchSampler(lengths, batch_size=1000, max_frames=budget, shuffle=True, seed=3, num_replicas=1, rank=0)
    other.set_epoch(5)
    assert [b for b in full] != [b for b in other]  # another batch order every epoch


@pytest.mark.parametrize("optim, total, epochs, expect", [
    ({"warmup_steps": 500}, 1400, 100, 500),
    ({"warmup_steps": 500, "warmup_epochs": 10}, 1400, 100, 140),  # 14 steps per epoch
    ({"warmup_epochs": 10}, 10600, 100, 1060),
    ({"warmup_steps": 5000}, 1000, 10, 999),  # capped: the decay needs at least one step
])
def test_warmup_in_epochs_follows_steps_per_epoch(optim, total, epochs, expect):
    from asr.lightning.module import warmup_steps

    assert warmup_steps({"lr": 1e-3, **optim}, total, epochs) == expect


def test_xavier_init_option():
    from asr.models.asr_model import build_model

    cfg = {"encoder": {"type": "transformer", "d_model": 32, "num_heads": 2, "ff_dim": 64, "num_layers": 1, "conv_channels": 8},
           "attention": {"type": "location_aware", "att_dim": 32}, "decoder": {"type": "transformer", "d_model": 32, "num_heads": 2, "ff_dim": 64, "num_layers": 1},
           "ctc_weight": 0.3}
    torch.manual_seed(0)
    default = build_model(cfg, 12, 2, 3, 0)
    torch.manual_seed(0)
    xavier = build_model({**cfg, "init": "xavier_uniform"}, 12, 2, 3, 0)
    w_d, w_x = default.encoder.layers[0].ff.w_1.weight, xavier.encoder.layers[0].ff.w_1.weight
    bound = (6 / (w_x.shape[0] + w_x.shape[1])) ** 0.5  # Glorot & Bengio 2010
    assert w_x.abs().max() <= bound and w_x.abs().max() > 0.9 * bound
    assert w_d.abs().max() < 0.75 * bound  # PyTorch default: 1/sqrt(fan_in), here 0.71 of the Glorot bound
    assert torch.count_nonzero(xavier.encoder.layers[0].ff.w_1.bias) == 0
    assert torch.equal(xavier.encoder.norm.weight, torch.ones(32))  # LayerNorm untouched
    with pytest.raises(ValueError, match="model.init"):
        build_model({**cfg, "init": "orthogonal"}, 12, 2, 3, 0)


def test_length_jitter_varies_batches_per_epoch_deterministically(real_feats):
    """length_jitter > 0: new batch compositions every epoch, drawn from (seed, epoch) only (a resumed run redraws
    the same), every utterance once, the padded-frame budget kept on the true lengths; 0 keeps fixed batches."""
    lengths = [real_feats[k].shape[0] for k in sorted(real_feats)] * 8  # 48 utterances, 148-208 frames
    budget = 800

    def epoch(jitter: float, e: int, seed: int = 5) -> list[frozenset]:
        s = LengthBucketBatchSampler(lengths, 1000, budget, shuffle=True, seed=seed, num_replicas=1, rank=0, length_jitter=jitter)
        s.set_epoch(e)
        batches = [[i for i, _ in b] for b in s]
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert all(len(b) * max(lengths[i] for i in b) <= budget for b in batches)
        return [frozenset(b) for b in batches]

    fixed = [set(epoch(0.0, e)) for e in range(3)]
    assert fixed[0] == fixed[1] == fixed[2]
    jittered = [set(epoch(0.15, e)) for e in range(3)]
    assert jittered[0] != jittered[1] and jittered[1] != jittered[2]
    assert epoch(0.15, 1) == epoch(0.15, 1)  # same (seed, epoch), same batches in the same order
    assert epoch(0.15, 1, seed=6) != epoch(0.15, 1, seed=5)
    with pytest.raises(ValueError, match="length_jitter"):
        LengthBucketBatchSampler(lengths, 8, length_jitter=1.5)


@pytest.mark.parametrize("jitter", [0.0, 0.15])
def test_sortagrad_first_epochs_shortest_first_then_shuffled(real_feats, jitter):
    """sortagrad=2: epochs 0 and 1 go through the (unjittered) batches in ascending length, every utterance once,
    on every rank of a 2-process split too; epoch 2 is the usual shuffled order, the same as without SortaGrad."""
    lengths = [real_feats[k].shape[0] + 7 * j for j in range(8) for k in sorted(real_feats)]  # 48 distinct-ish
    budget = 900

    def epoch(sortagrad: int, e: int, replicas: int = 1, rank: int = 0) -> list[list[int]]:
        s = LengthBucketBatchSampler(lengths, 1000, budget, shuffle=True, seed=5, num_replicas=replicas, rank=rank,
                                     length_jitter=jitter, sortagrad=sortagrad)
        s.set_epoch(e)
        return [[i for i, _ in b] for b in s]

    for e in (0, 1):
        batches = epoch(2, e)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        longest = [max(lengths[i] for i in b) for b in batches]
        assert longest == sorted(longest) and len(set(longest)) > 3
        ranks = [epoch(2, e, 2, r) for r in (0, 1)]
        assert [b for pair in zip(*ranks) for b in pair][: len(batches)] == batches  # rank r takes batches r, r+2, ...
    shuffled = epoch(2, 2)
    longest = [max(lengths[i] for i in b) for b in shuffled]
    assert longest != sorted(longest)
    assert shuffled == epoch(0, 2)
    assert epoch(0, 0) != epoch(2, 0)
    with pytest.raises(ValueError, match="sortagrad"):
        LengthBucketBatchSampler(lengths, 8, sortagrad=-1)
