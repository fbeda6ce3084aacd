"""recipes/librispeech_100: the experiment files compose with every trainer, and run.sh runs stages 1-7 end to end on
a tiny corpus in LibriSpeech's exact layout (``LibriSpeech/<split>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` and
``<spk>-<chapter>.trans.txt``) made from the real AN4 utterances of tests/data/an4, converted to FLAC."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from asr.utils.paths import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes/librispeech_100"
AN4 = Path(__file__).parent / "data/an4"
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment/librispeech_100").glob("*.yaml"))


def _an4_utterances() -> dict[str, list[tuple[Path, str]]]:
    """``{"train": [(wav, TRANSCRIPT), ...], "test": [...]}`` from the AN4 excerpt's own file lists."""
    out: dict[str, list[tuple[Path, str]]] = {}
    for part in ("train", "test"):
        texts = {}
        for line in (AN4 / f"etc/an4_{part}.transcription").read_text().splitlines():
            m = re.match(r"^(.*)\((\S+)\)\s*$", line.strip())
            texts[m.group(2)] = " ".join(w for w in m.group(1).split() if w not in ("<s>", "</s>"))
        ids = (AN4 / f"etc/an4_{part}.fileids").read_text().split()
        out[part] = [(AN4 / "wav" / f"{fid}.wav", texts[Path(fid).name]) for fid in ids]
    return out


def make_librispeech_layout(root: Path) -> Path:
    """``<root>/LibriSpeech`` with train-clean-100 (the 8 AN4 training utterances, two per chapter), dev-clean (2 of
    them again), test-clean and test-other (the 2 AN4 test utterances each), as FLAC; numeric speaker and chapter
    ids, one ``<spk>-<chapter>.trans.txt`` per chapter. Returns the LibriSpeech directory."""
    import soundfile as sf

    utts = _an4_utterances()
    splits = {
        "train-clean-100": (100, utts["train"]),
        "dev-clean": (200, utts["train"][:2]),
        "test-clean": (300, utts["test"]),
        "test-other": (400, utts["test"]),
    }
    corpus = root / "LibriSpeech"
    for split, (spk0, items) in splits.items():
        for i, (wav, text) in enumerate(items):
            spk, chapter, utt = spk0 + i // 2, 10 * (spk0 + i // 2) + 7, i % 2
            d = corpus / split / str(spk) / str(chapter)
            d.mkdir(parents=True, exist_ok=True)
            audio, rate = sf.read(wav, dtype="int16")
            sf.write(d / f"{spk}-{chapter}-{utt:04d}.flac", audio, rate, format="FLAC", subtype="PCM_16")
            with open(d / f"{spk}-{chapter}.trans.txt", "a", encoding="utf-8") as f:
                f.write(f"{spk}-{chapter}-{utt:04d} {text}\n")
    return corpus


def test_fixture_corpus_has_librispeech_layout(tmp_path):
    """The test corpus has LibriSpeech's names, as lhotse's prepare_librispeech reads them, and lossless audio."""
    import soundfile as sf

    corpus = make_librispeech_layout(tmp_path)
    flacs = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*.flac"))
    assert len(flacs) == 8 + 2 + 2 + 2 and "train-clean-100/100/1007/100-1007-0000.flac" in flacs
    trans = (corpus / "test-other/400/4007/400-4007.trans.txt").read_text().splitlines()
    assert trans == ["400-4007-0000 J P E G FOUR", "400-4007-0001 ONE FIVE TWO ONE THREE"]
    flac, rate = sf.read(corpus / "test-other/400/4007/400-4007-0000.flac", dtype="int16")
    wav, _ = sf.read(AN4 / "wav/an4test_clstk/fjlp/an419-fjlp-b.wav", dtype="int16")
    assert rate == 16000 and sf.info(corpus / "test-other/400/4007/400-4007-0000.flac").format == "FLAC" and (flac == wav).all()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp", "ddp_multinode"])
def test_experiments_compose_with_every_trainer_and_instantiate(experiment, trainer):
    from omegaconf import OmegaConf

    from asr.models.asr_model import build_model

    overrides = {"ddp_multinode": ["trainer=ddp", "trainer.devices=8", "trainer.num_nodes=4"]}.get(trainer, [f"trainer={trainer}"])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment=librispeech_100/{experiment}", *overrides])
    assert cfg.name == f"librispeech_100_{experiment}"
    assert (cfg.data.train, cfg.data.dev, cfg.data.test) == ("train-clean-100", "dev-clean", "test-clean")
    assert list(cfg.data.speed_perturb) == [0.9, 1.0, 1.1] and cfg.data.num_workers > 0
    # the experiment's own batches win over trainer=gpu's 200 s: read after it
    assert cfg.data.max_duration >= 300 and cfg.data.batch_size >= 100
    assert cfg.tokenizer.kind == "bpe" and cfg.tokenizer.vocab_size == 300 and cfg.tokenizer.model == "data/token/bpe300.model"
    assert cfg.features.cmvn == "dump/train-clean-100/cmvn.pt"
    if trainer == "ddp_multinode":
        assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.num_nodes) == ("ddp", 8, 4)
    elif trainer == "gpu":
        assert cfg.trainer.accelerator == "gpu" and cfg.trainer.num_nodes == 1
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True), 300, 2, 3, 0)
    n_params = sum(p.numel() for p in model.parameters())
    assert model.ctc is not None and model.subsampling_factor == 4
    if experiment == "transformer":
        # ESPnet librispeech_100 sizes: d 256, 4 heads, 12 x FF 1024 encoder, 6 x FF 2048 decoder
        e, d = cfg.model.encoder, cfg.model.decoder
        assert (e.d_model, e.num_heads, e.ff_dim, e.num_layers, d.d_model, d.num_heads, d.ff_dim, d.num_layers) == (256, 4, 1024, 12, 256, 4, 2048, 6)
        assert 15e6 < n_params < 30e6
    else:
        assert cfg.model.encoder.type == "pblstm" and cfg.model.decoder.type == "rnn"
        assert 15e6 < n_params < 45e6


def test_run_sh_stages_1_to_7_on_a_librispeech_layout(tmp_path):
    corpus = make_librispeech_layout(tmp_path / "corpus")
    work = tmp_path / "recipe"
    work.mkdir()
    # run.sh works in its own folder: run a copy, so the test writes nothing into the repository
    (work / "run.sh").write_bytes((RECIPE / "run.sh").read_bytes())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    env.pop("LIBRISPEECH_ROOT", None)
    tiny = (
        "model.encoder.d_model=32 model.encoder.num_heads=2 model.encoder.ff_dim=64 model.encoder.num_layers=1 "
        "model.encoder.conv_channels=8 model.decoder.d_model=32 model.decoder.num_heads=2 model.decoder.ff_dim=64 "
        "model.decoder.num_layers=1 trainer.max_epochs=1 trainer.check_val_every_n_epoch=1 trainer.limit_train_batches=2 "
        "trainer.accumulate_grad_batches=1 "
        "trainer.enable_progress_bar=false data.num_workers=0 data.max_duration=6 threads=1"
    )
    cmd = [
        "bash", str(work / "run.sh"), "--corpus_dir", str(corpus), "--experiment", "librispeech_100/transformer",
        "--tokenizer_kind", "char", "--vocab_size", "0", "--nj", "1", "--beam_size", "2", "--ctc_weight", "0.3", "--average", "1",
        "--tag", "_smoke", "--train_args", tiny, "--decode_args", "threads=1 batch_size=4",
    ]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    print(f"run.sh stages 1-7: {time.time() - t0:.1f} s")

    # stage 0 skipped: the corpus was given
    assert "stage 0: skipped" in out
    # stage 1: lhotse's prepare_librispeech -> cuts + Kaldi data dirs, LibriSpeech utterance ids kept
    for split, n in (("train-clean-100", 8), ("dev-clean", 2), ("test-clean", 2), ("test-other", 2)):
        d = work / "data" / split
        assert (d / "cuts.jsonl.gz").is_file()
        ids = [ln.split()[0] for ln in (d / "text").read_text().splitlines()]
        assert len(ids) == n and all(re.fullmatch(r"\d+-\d+-\d{4}", i) for i in ids), ids
        assert all(ln.split()[1].endswith(".flac") for ln in (d / "wav.scp").read_text().splitlines())
    assert (work / "data/test-other/text").read_text().splitlines()[0] == "400-4007-0000 J P E G FOUR"
    # stage 2: stored fbank + CMVN of the training split; stage 3: tokenizer where the training config looks
    assert (work / "dump/train-clean-100/cuts.jsonl.gz").is_file() and (work / "dump/train-clean-100/cmvn.pt").is_file()
    assert (work / "data/token/char0.model").is_file()
    # stage 4-5: trained, averaged, decoded
    exp = work / "exp/librispeech_100_transformer_smoke"
    assert (exp / "checkpoints/last.ckpt").is_file() and (exp / "checkpoints/avg1.ckpt").is_file()
    # stage 6: scoring of dev-clean, test-clean and test-other
    for split in ("dev-clean", "test-clean", "test-other"):
        d = exp / f"decode_{split}_beam2_ctc0.3_avg1"
        for f in ("results.jsonl", "scoring/wer.json", "scoring/result.txt", "scoring/per_utt.txt"):
            assert (d / f).is_file(), d / f
    # stage 7 and the end: one WER line per test split
    for split in ("test-clean", "test-other"):
        assert re.search(rf"^{split}\s+WER\s+[0-9.]+ %", out, re.M), out[-3000:]
    assert (exp / "results_beam2_ctc0.3_avg1.md").is_file()
