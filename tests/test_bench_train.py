"""scripts/bench_train.py's operator counts: the figures behind "hoisted teacher forcing dispatches fewer ops"."""

from __future__ import annotations

import torch

from asr.models.attention import build_attention
from asr.models.decoders.rnn import RNNAttentionDecoder
from conftest import load_script


def test_count_ops_counts_calls_and_hoisted_loop_dispatches_fewer():
    bench = load_script("bench_train")
    torch.manual_seed(0)
    dec = RNNAttentionDecoder(12, 24, build_attention("location_aware", 20, 24, att_dim=16, kernel_size=5), embed_dim=8, hidden_size=20, dropout=0.1).train()
    keys, lens = torch.randn(3, 7, 24), torch.tensor([7, 4, 5])
    u = 6
    ys_in = torch.randint(0, 12, (3, u))

    def step(fwd):
        return lambda: fwd(keys, lens, ys_in)[0].sum().backward()

    one = bench.count_ops(lambda: torch.ones(3).add(1).mul(2), "cpu")
    assert one["top_aten"] == 3 and one["aten_calls"] >= 3  # ones, add, mul (ones nests fill_/empty)
    assert one["kernels"] != one["kernels"]  # NaN on the CPU
    hoisted, stepwise = bench.count_ops(step(dec.forward), "cpu"), bench.count_ops(step(dec.forward_stepwise), "cpu")
    for c in (hoisted, stepwise):
        assert 0 < c["top_aten"] < c["aten_calls"]
    # The hoist takes U - 1 embedding lookups and output layers (forward and backward) out of the loop.
    assert hoisted["top_aten"] < stepwise["top_aten"] - 2 * (u - 1)
    assert hoisted["aten_calls"] < stepwise["aten_calls"]


def test_model_config_applies_overrides():
    """``--overrides`` reaches the benchmarked model (e.g. the CPU-sized Transformer of the recipe README)."""
    bench = load_script("bench_train")
    assert bench.model_config("an4/transformer_ctc")["encoder"]["d_model"] == 256
    small = bench.model_config("an4/transformer_ctc", ["model.encoder.d_model=192", "model.decoder.num_layers=3"])
    assert small["encoder"]["d_model"] == 192 and small["decoder"]["num_layers"] == 3
