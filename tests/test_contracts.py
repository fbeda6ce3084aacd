"""The shared layers and written contracts of the model parts (issue 31, part 1): one multi-head attention class
behind the Transformer encoder, the Transformer decoder and the RNN decoder's ``multihead`` scorer; every registered
encoder, decoder and scorer satisfies its Protocol; a decoder must declare whether it takes a scorer; checkpoints
written before the layer was shared still load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asr.models import layers
from asr.models.asr_model import DECODERS, ENCODERS, build_model, decoder_uses_attention
from asr.models.attention.scorers import ATTENTION_TYPES, build_attention
from asr.models.interfaces import Decoder, Encoder, Scorer

MODEL = {
    "encoder": {"type": "transformer", "d_model": 32, "num_heads": 4, "ff_dim": 64, "num_layers": 1, "dropout": 0.0},
    "decoder": {"type": "transformer", "d_model": 32, "num_heads": 4, "ff_dim": 64, "num_layers": 1, "dropout": 0.0},
    "attention": {"type": "multihead", "att_dim": 16, "num_heads": 4},
    "ctc_weight": 0.0,
}


def _model(enc: str, dec: str) -> nn.Module:
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in MODEL.items()}
    if enc == "pblstm":
        cfg["encoder"] = {"type": "pblstm", "hidden_size": 16, "num_layers": 2, "subsample": [2, 2], "dropout": 0.0}
    elif enc == "conformer":
        cfg["encoder"] = {"type": "conformer", "d_model": 32, "num_heads": 4, "ff_dim": 64, "num_layers": 1, "dropout": 0.0, "conv_kernel": 5, "conv_channels": 8}
    if dec == "rnn":
        cfg["decoder"] = {"type": "rnn", "hidden_size": 32, "embed_dim": 16, "num_layers": 1, "dropout": 0.0}
    return build_model(cfg, vocab_size=12, sos_id=1, eos_id=2, pad_id=0, feat_dim=20)


@pytest.mark.parametrize("enc", sorted(ENCODERS))
@pytest.mark.parametrize("dec", sorted(DECODERS))
def test_every_registered_part_meets_its_protocol(enc, dec):
    m = _model(enc, dec)
    assert isinstance(m.encoder, Encoder) and isinstance(m.decoder, Decoder)
    assert isinstance(type(m.decoder).needs_attention, bool) and decoder_uses_attention(dec) is (dec == "rnn")
    xs, lens = torch.randn(2, 40, 20), torch.tensor([40, 27])
    assert type(m.encoder) is ENCODERS[enc]
    hs, hs_lens = m.encoder(xs, lens)
    assert hs.shape[-1] == m.encoder.output_dim and hs_lens.tolist() == m.encoder.output_lengths(lens).tolist()


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="CPU without native bf16")
@pytest.mark.parametrize("enc", sorted(ENCODERS))
def test_every_encoder_decodes_with_a_bf16_encoder(enc):
    """``set_encoder_dtype("bfloat16")``: the encoder computes in bf16 (autocast; the pBLSTM's dense path), the
    model hands float32 on, close to the float32 output at valid frames."""
    m = _model(enc, "rnn").eval()
    xs, lens = torch.randn(2, 40, 20), torch.tensor([40, 27])
    ref, ref_lens = m.encode(xs, lens)
    m.set_encoder_dtype("bfloat16")
    hs, hs_lens = m.encode(xs, lens)
    assert hs.dtype == torch.float32 and torch.equal(hs_lens, ref_lens) and not torch.equal(hs, ref)
    valid = layers.make_pad_mask(hs_lens, hs.shape[1])
    assert (hs - ref).abs()[valid].max() < 0.15


@pytest.mark.parametrize("name", sorted(ATTENTION_TYPES))
def test_every_scorer_meets_its_protocol(name):
    assert isinstance(build_attention(name, query_dim=8, key_dim=6), Scorer)


def test_a_decoder_without_the_declaration_is_refused():
    class Bare(nn.Module):
        pass

    with pytest.raises(TypeError, match="does not declare needs_attention"):
        decoder_uses_attention(Bare)
    with pytest.raises(ValueError, match="unknown decoder type"):
        decoder_uses_attention("lstm")


def test_one_multi_head_attention_class_everywhere():
    mhas = {type(mod) for dec in ("rnn", "transformer") for mod in _model("transformer", dec).modules() if "MultiHead" in type(mod).__name__ and not hasattr(mod, "mha")}
    assert mhas == {layers.MultiHeadAttention}
    scorer = build_attention("multihead", query_dim=8, key_dim=6, att_dim=8, num_heads=2)
    assert isinstance(scorer.mha, layers.MultiHeadAttention)
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "asr"
    defs = [f"{p.relative_to(root)}: {m}" for p in root.rglob("*.py") for m in re.findall(r"^class .*MultiHeadAttention.*$", p.read_text(), re.M)]
    assert len(defs) == 1, defs


def test_multihead_scorer_checkpoints_from_before_the_shared_layer_load_and_score_the_same():
    torch.manual_seed(0)
    new = build_attention("multihead", query_dim=8, key_dim=6, att_dim=8, num_heads=2).eval()
    renames = {"mha.w_q": "W_q", "mha.w_kv": "W_kv", "mha.w_o": "W_o"}
    old_sd = {}
    for k, v in new.state_dict().items():
        for a, b in renames.items():
            k = k.replace(a, b)
        old_sd[k] = v.clone()
    assert set(old_sd) == {"W_q.weight", "W_q.bias", "W_kv.weight", "W_kv.bias", "W_o.weight", "W_o.bias"}
    loaded = build_attention("multihead", query_dim=8, key_dim=6, att_dim=8, num_heads=2).eval()
    loaded.load_state_dict(old_sd)
    q, keys = torch.randn(3, 8), torch.randn(3, 5, 6)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 5])
    state = new.init_state(mask)
    a, b = new(q, keys, new.precompute(keys), mask, state), loaded(q, keys, loaded.precompute(keys), mask, state)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert float(a[1][1, 3:].detach().abs().sum()) == 0.0  # padded frames get no weight


def test_model_configs_are_typed_frozen_and_checked():
    import dataclasses

    from asr.models.config import ModelConfig

    d = {"encoder": {"type": "pblstm", "hidden_size": 16, "subsample": [2, 2, 1]}, "decoder": {"type": "rnn"}, "attention": {"type": "location_aware"}, "ctc_weight": 0.3}
    mc = ModelConfig.from_dict(d)
    assert mc.encoder.hidden_size == 16 and mc.encoder.num_layers == 3 and mc.encoder.subsample == (2, 2, 1)  # defaults filled
    assert mc.decoder.hidden_size == 256 and mc.attention.kernel_size == 31 and mc.ctc_weight == 0.3
    with pytest.raises(dataclasses.FrozenInstanceError):
        mc.encoder.hidden_size = 32
    assert ModelConfig.from_dict(mc.to_dict()) == mc and mc.to_dict()["encoder"]["subsample"] == [2, 2, 1]
    for bad, msg in (
        ({**d, "encoder": {"type": "pblstm", "hiden_size": 16}}, r"model.encoder \(pblstm\): unknown key\(s\) \['hiden_size'\]"),
        ({**d, "decoder": {"type": "lstm"}}, r"unknown decoder type 'lstm' \(model.decoder.type\)"),
        ({**d, "extra": 1}, r"model: unknown key\(s\) \['extra'\]"),
        ({**d, "init": "orthogonal"}, "unknown model.init"),
        ({"decoder": {"type": "rnn"}}, "model.encoder is missing"),
    ):
        with pytest.raises(ValueError, match=msg):
            ModelConfig.from_dict(bad)
        with pytest.raises(ValueError, match=msg):
            build_model(bad, vocab_size=12, sos_id=1, eos_id=2, pad_id=0, feat_dim=20)


def test_checkpoints_store_the_whole_typed_config_and_older_ones_still_load(tmp_path, ctc_ckpt):
    """A new checkpoint's model_cfg holds every field (defaults included); a checkpoint whose model_cfg holds only
    the keys that were set (as older ones did) loads to the same model."""
    from asr.models.checkpoint import load_checkpoint
    from asr.models.config import ModelConfig

    ckpt = ctc_ckpt
    payload = torch.load(ckpt, map_location="cpu", weights_only=False)
    stored = payload["asr"]["model_cfg"] if "asr" in payload else payload["model_cfg"]
    full = ModelConfig.from_dict(stored).to_dict()
    assert stored == full  # written whole
    model, _, _ = load_checkpoint(ckpt)
    sparse = {"encoder": {k: v for k, v in full["encoder"].items() if k in ("type", "hidden_size", "num_layers", "subsample")},
              "decoder": {"type": full["decoder"]["type"], "hidden_size": full["decoder"]["hidden_size"], "embed_dim": full["decoder"]["embed_dim"]},
              "attention": {"type": full["attention"]["type"]}, "ctc_weight": full["ctc_weight"]}
    if "asr" in payload:
        payload["asr"]["model_cfg"] = sparse
    else:
        payload["model_cfg"] = sparse
    old = tmp_path / "old.ckpt"
    torch.save(payload, old)
    model2, _, _ = load_checkpoint(old)
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), k


def test_the_shipped_model_directory_loads_and_its_config_is_typed():
    from pathlib import Path

    import yaml

    from asr.models.config import ModelConfig
    from asr.models.pretrained import load_model

    root = Path(__file__).resolve().parents[1] / "models" / "an4_pblstm_x4"
    model, _, _, info = load_model(root)
    mc = ModelConfig.from_dict(yaml.safe_load((root / "config.yaml").read_text())["model"])
    assert mc.encoder.subsample == (2, 2, 1) and model.encoder.subsampling_factor == 4
