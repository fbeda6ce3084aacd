"""Language-model shallow fusion (issue 31, part 3): asr-train-lm trains a token LSTM LM on real AN4 transcripts,
the file is refused with another tokenizer, and the search fuses it as (1-λ) att + λ ctc + β lm: β = 0 gives exactly
the search without LM, β > 0 changes scores, batched = unbatched with the LM, and asr-decode takes lm=/lm_weight=."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import MINI_AN4

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lm_file(mini_an4, tmp_path_factory) -> Path:
    from asr.cli.train_lm import read_sentences, train_lm
    from asr.text.tokenizer import Tokenizer

    tok = Tokenizer.from_file(mini_an4 / "data/token/char.model")
    train = read_sentences(mini_an4 / "data/train_nodev/text")
    dev = read_sentences(mini_an4 / "data/train_dev/text")
    out = tmp_path_factory.mktemp("lm") / "lm.pt"
    res = train_lm(train, dev, tok, out, epochs=8, batch_size=4, lr=3e-3, embed_dim=32, hidden_size=64)
    assert res["dev_ppl"] < tok.vocab_size  # learned something: better than a uniform guess over the vocabulary
    return out


def test_lm_file_loads_with_its_tokenizer_only(lm_file, mini_an4, tmp_path):
    from asr.models.lm import LSTMLM, load_lm
    from asr.text.tokenizer import Tokenizer

    tok = Tokenizer.from_file(mini_an4 / "data/token/char.model")
    lm = load_lm(lm_file, tok)
    assert isinstance(lm, LSTMLM) and not lm.training
    other = Tokenizer.from_file(ROOT / "models/an4_pblstm_x4/tokenizer.model")
    with pytest.raises(ValueError, match="trained with another tokenizer"):
        load_lm(lm_file, other)
    with pytest.raises(FileNotFoundError, match="no language model"):
        load_lm(tmp_path / "none.pt", tok)
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(ValueError, match="not a language model file"):
        load_lm(bad, tok)


def test_fusion_weight_zero_is_the_plain_search_and_batched_equals_unbatched(lm_file, ctc_ckpt, mini_an4, real_feats):
    from asr.decoding.search import DecodingOptions, beam_search, greedy_search
    from asr.models.checkpoint import load_checkpoint
    from asr.models.lm import load_lm

    model, tok, _ = load_checkpoint(ctc_ckpt)
    model.eval()
    lm = load_lm(lm_file, tok)
    feats = [real_feats[k] for k in sorted(real_feats)[:3]]
    xs = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    lens = torch.tensor([f.shape[0] for f in feats])
    base = DecodingOptions(beam_size=3, ctc_weight=0.3, max_len_ratio=0.5, min_len=1, no_speech_db=0.0)
    plain = beam_search(model, xs, lens, base)
    zero = beam_search(model, xs, lens, base, lm=lm)  # lm_weight 0: the LM is not consulted
    assert [(h.tokens, h.score) for h in plain] == [(h.tokens, h.score) for h in zero]
    fused_opts = DecodingOptions(beam_size=3, ctc_weight=0.3, max_len_ratio=0.5, min_len=1, no_speech_db=0.0, lm_weight=0.5)
    fused = beam_search(model, xs, lens, fused_opts, lm=lm)
    assert any(abs(a.score - b.score) > 1e-4 for a, b in zip(plain, fused))
    for i, f in enumerate(feats):  # batched = unbatched with the LM
        one = beam_search(model, f[None], lens[i : i + 1], fused_opts, lm=lm)[0]
        assert one.tokens == fused[i].tokens and one.score == pytest.approx(fused[i].score, abs=1e-4)
    g = greedy_search(model, xs, lens, DecodingOptions(beam_size=1, ctc_weight=0.0, max_len_ratio=0.5, min_len=1, lm_weight=0.5), lm=lm)
    g0 = greedy_search(model, xs, lens, DecodingOptions(beam_size=1, ctc_weight=0.0, max_len_ratio=0.5, min_len=1), lm=lm)
    assert any(abs(a.score - b.score) > 1e-4 for a, b in zip(g, g0))
    with pytest.raises(ValueError, match="lm_weight must be >= 0"):
        DecodingOptions(lm_weight=-0.1)


def test_asr_decode_and_speech2text_take_the_lm(lm_file, ctc_model_dir, mini_an4, tmp_path):
    from asr import Speech2Text

    wav = str(MINI_AN4 / "wav/an4test_clstk/fjlp/an419-fjlp-b.wav")
    with pytest.raises(ValueError, match="lm_weight=0.3 needs a language model"):
        Speech2Text.from_pretrained(ctc_model_dir, beam_size=2, lm_weight=0.3, max_len_ratio=0.3, min_len=1).transcribe([wav])
    s2t = Speech2Text.from_pretrained(ctc_model_dir, lm=lm_file, beam_size=2, lm_weight=0.3, max_len_ratio=0.3, min_len=1)
    (r,) = s2t.transcribe([wav])
    assert r.error is None
    out = tmp_path / "d"
    proc = subprocess.run([sys.executable, "-m", "asr.cli.decode", f"ckpt={ctc_model_dir}", f"audio={wav}", f"out_dir={out}", f"lm={lm_file}", "lm_weight=0.3",
                           "beam_size=2", "max_len_ratio=0.3", "min_len=1", "threads=1"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-1500:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["lm_weight"] == 0.3 and meta["lm"] == str(lm_file)
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["hyp"] == r.text


def test_asr_train_lm_errors_are_one_line(tmp_path, capsys):
    from asr.cli.train_lm import main

    assert main(["--text", str(tmp_path / "none"), "--dev_text", str(tmp_path / "none"), "--tokenizer", str(ROOT / "models/an4_pblstm_x4/tokenizer.model"), "--out", str(tmp_path / "lm.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("asr-train-lm: no text file at")
