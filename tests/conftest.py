"""Shared fixtures: the 10-utterance AN4 excerpt in tests/data/an4, prepared like the recipe does it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
MINI_AN4 = DATA / "an4"


@pytest.fixture(scope="session")
def mini_an4(tmp_path_factory) -> Path:
    """Recipe stages 1-3 on the excerpt: ``data/{train_nodev,train_dev,test}``, ``dump/``, char tokenizer.

    train_dev holds 2 of the 8 training utterances (dev_size=2), so train_nodev has 6.
    """
    from asr.cli.prepare import dump_feats_main, tokenizer_main
    from asr.data.an4 import prepare_an4

    root = tmp_path_factory.mktemp("mini_an4")
    prepare_an4(MINI_AN4, root / "data", dev_size=2, max_bad_fraction=0.0, progress=False)
    dump_feats_main([f"data_root={root / 'data'}", f"dump={root / 'dump'}"])
    tokenizer_main([f"text={root / 'data/train_nodev/text'}", "kind=char", "vocab_size=0", f"model={root / 'data/token/char.model'}"])
    return root


@pytest.fixture(scope="session")
def real_feats(mini_an4) -> dict[str, torch.Tensor]:
    """fbank ``(T, 80)`` of the 6 train_nodev utterances, keyed by utterance id."""
    return torch.load(mini_an4 / "dump/train_nodev/feats.pt", weights_only=True)


def an4_root() -> Path | None:
    """The real corpus if ``AN4_ROOT`` points at it."""
    p = os.environ.get("AN4_ROOT")
    return Path(p) if p and Path(p, "etc").is_dir() else None
