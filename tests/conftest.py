"""Shared fixtures: the 10-utterance AN4 excerpt in tests/data/an4, prepared like the recipe does it, a batch of
its fbank, and small models and checkpoints for decoding tests."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
MINI_AN4 = DATA / "an4"


@pytest.fixture(scope="session")
def mini_an4(tmp_path_factory) -> Path:
    """Recipe stages 1-3 on the excerpt: ``data/{train_nodev,train_dev,test}`` (Kaldi dirs + lhotse cuts), ``dump/``
    (stored fbank + cuts of train_nodev and train_dev, CMVN, and every split's ``feats.pt``), char tokenizer.

    train_dev holds 2 of the 8 training utterances (dev_size=2), so train_nodev has 6.
    """
    from asr.cli.prepare import compute_feats_main, dump_feats_main, prepare_main, tokenizer_main
    from asr.data.an4 import prepare_an4

    root = tmp_path_factory.mktemp("mini_an4")
    prepare_an4(MINI_AN4, root / "data", dev_size=2, max_bad_fraction=0.0, progress=False)
    prepare_main(["source=kaldi", f"in_dir={root / 'data'}", f"out_dir={root / 'data'}", "max_bad_fraction=0.0"])
    compute_feats_main([f"data_root={root / 'data'}", f"dump={root / 'dump'}"])  # stored fbank + CMVN (training)
    dump_feats_main([f"data_root={root / 'data'}", f"dump={root / 'dump'}", "speeds=[]"])  # feats.pt (decoding tests)
    tokenizer_main([f"text={root / 'data/train_nodev/text'}", "kind=char", "vocab_size=0", f"model={root / 'data/token/char.model'}"])
    return root


@pytest.fixture(scope="session")
def real_feats(mini_an4) -> dict[str, torch.Tensor]:
    """fbank ``(T, 80)`` of the 6 train_nodev utterances, keyed by utterance id."""
    return torch.load(mini_an4 / "dump/train_nodev/feats.pt", weights_only=True)


@pytest.fixture
def batch(real_feats) -> tuple[torch.Tensor, torch.Tensor]:
    """``(xs (4, T, 80), lens (4,))``: the first 4 train_nodev utterances (by id), padded."""
    feats = [real_feats[k] for k in sorted(real_feats)][:4]
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), torch.tensor([f.shape[0] for f in feats])


@pytest.fixture(scope="session")
def ctc_ckpt(mini_an4, tmp_path_factory) -> Path:
    """A tiny untrained ×8 pBLSTM checkpoint with a CTC branch and the mini_an4 char tokenizer."""
    from asr.text.tokenizer import Tokenizer

    tok = Tokenizer.from_file(mini_an4 / "data/token/char.model")
    return make_ckpt(tok, tmp_path_factory.mktemp("ck") / "ctc.ckpt", seed=0, overrides=("model.ctc_weight=0.3",))


@pytest.fixture(scope="session")
def ctc_model_dir(ctc_ckpt, tmp_path_factory) -> Path:
    """``ctc_ckpt`` exported as a model directory (``asr-export``)."""
    from asr.cli.export import export

    out = tmp_path_factory.mktemp("export") / "tiny"
    export(ctc_ckpt, out)
    return out


def tiny_ctc_model(seed: int = 0, subsample: tuple[int, ...] = (4, 2), vocab_size: int = 12):
    """A random pBLSTM + location-aware model with a CTC branch (ids: pad/blank 0, sos 2, eos 3), its output and
    CTC layers sharpened so that hypotheses end (eos) and differ between utterances."""
    from asr.models.asr_model import build_model

    torch.manual_seed(seed)
    cfg = {"encoder": {"type": "pblstm", "hidden_size": 32, "num_layers": len(subsample), "subsample": list(subsample), "dropout": 0.0}, "attention": {"type": "location_aware", "att_dim": 32}, "decoder": {"type": "rnn", "embed_dim": 16, "hidden_size": 32}, "label_smoothing": 0.0, "ctc_weight": 0.3}
    model = build_model(cfg, vocab_size=vocab_size, sos_id=2, eos_id=3, pad_id=0).eval()
    with torch.no_grad():
        model.decoder.output.weight.mul_(8.0)
        model.decoder.output.bias[3] += 0.5
        model.ctc.weight.mul_(6.0)
    return model


def make_ckpt(tok, path: Path, seed: int, overrides: tuple[str, ...] = ()) -> Path:
    """An untrained tiny model (``asr-train``'s config with a small pBLSTM ×8 and decoder, plus ``overrides``)
    with tokenizer ``tok``, saved the way training saves it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from asr.lightning.module import ASRLightningModule
    from asr.utils.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["model.encoder.hidden_size=16", "model.encoder.num_layers=2", "model.encoder.subsample=[4,2]",
                                          "model.decoder.hidden_size=16", "model.decoder.embed_dim=8", *overrides])
    torch.manual_seed(seed)
    module = ASRLightningModule(OmegaConf.to_container(cfg.model, resolve=True), tok, OmegaConf.to_container(cfg.optim, resolve=True))
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def an4_root() -> Path | None:
    """The real corpus if ``AN4_ROOT`` points at it."""
    p = os.environ.get("AN4_ROOT")
    return Path(p) if p and Path(p, "etc").is_dir() else None


def load_script(name: str):
    """The module ``scripts/<name>.py`` (the scripts are not a package), loaded afresh."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
