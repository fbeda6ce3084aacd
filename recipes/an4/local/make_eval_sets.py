#!/usr/bin/env python3
"""Evaluation sets for audio unlike AN4's close-talking 16 kHz recordings (issue 32), built from AN4 test.

    local/make_eval_sets.py build data/test data [--seed 0] [--sets test_8k,test_noise10,...]
    local/make_eval_sets.py summarize <decode_dir> <set>      # one parseable line per scored set (run.sh stage 6)

``build`` reads the Kaldi data dir ``data/test`` (wav.scp, text, utt2spk) and writes, under the output root, one
Kaldi data dir per set (wav.scp with absolute paths, text, utt2spk, spk2utt, utt2dur, and ``info``: what was done
to each utterance) with its audio in ``<set>/audio/*.flac`` (16-bit FLAC). Nothing is random beyond ``--seed``:
a second run writes byte-identical files.

========================  ===============================================================================
``test_8k``               each utterance resampled to 8 kHz and written at 8 kHz (telephone band; the
                          decoder resamples it back to 16 kHz)
``test_noise10``/``0``    noise added at 10 / 0 dB SNR (signal and noise power over the whole utterance):
                          even-numbered utterances (in id order) white noise, odd ones babble (the sum of
                          4 other test utterances, each at unit RMS, repeated to length)
``test_reverb``           convolved with one of 5 fixed simulated rooms (lhotse FRA-RIR, Kaldi
                          wav-reverberate alignment and power), T60 0.3, 0.425, 0.55, 0.675, 0.8 s in turn
``silence``               ``--num_clips`` clips of 1-4 s holding a noise floor only (white noise at -70 dBFS
                          RMS, a quiet recording's level): expected transcript empty
``noise_only``            ``--num_clips`` clips of 1-4 s of white, pink, brown or babble noise in turn, at
                          the test set's median speech RMS: expected transcript empty. Its babble is the sum
                          of 32 test utterances (speech-shaped noise without words one can make out): with
                          4, as in ``test_noise*``, the clips held AN4 words a listener and the model hear
                          ("ONE THOUSAND FOUR OH E A C U M SEVEN" from talkers saying "ONE THREE SEVEN",
                          "B A O Z FIVE THREE", ...), so an empty transcript was not the right answer
========================  ===============================================================================

Empty transcripts: ``text`` holds the utterance id alone on its line, which
:func:`asr.data.datadir.check_data_dir` reads as ``""``. WER is undefined without reference words, so
``summarize`` reports for ``silence`` / ``noise_only`` the number of non-empty hypotheses (``nonempty``), the
hypothesis words (``words``: all insertions) and the decoder's counts of hypotheses stopped at the length limit
(``length_limit``) and of utterances judged to hold no speech (``no_speech``), from ``meta.json``; for the other
sets the WER/CER of ``asr-score`` (``scoring/wer.json``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

SR = 16000
SETS = ("test_8k", "test_noise10", "test_noise0", "test_reverb", "silence", "noise_only")
EMPTY_SETS = ("silence", "noise_only")
ROOM_T60S = (0.3, 0.425, 0.55, 0.675, 0.8)
BABBLE_TALKERS = 4              # test_noise10 / test_noise0: a few talkers, words partly intelligible
NOISE_ONLY_BABBLE_TALKERS = 32  # noise_only: no intelligible words (module docstring)


def _write_flac(path: Path, wav: torch.Tensor, sample_rate: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    x = wav.double().numpy()
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak > 0.99:  # keep 16-bit samples from clipping (scaling keeps the SNR)
        x = x * (0.99 / peak)
    tmp = path.with_name(f".{path.name}.tmp")
    sf.write(str(tmp), x, sample_rate, format="FLAC", subtype="PCM_16")
    tmp.replace(path)


def _babble(utts, audio, i: int, n: int, rng: random.Random, talkers: int = BABBLE_TALKERS) -> torch.Tensor:
    others = [u.utt_id for u in utts if u.utt_id != utts[i].utt_id]
    talkers = rng.sample(others, min(talkers, len(others)))
    out = torch.zeros(n, dtype=torch.float64)
    for t in talkers:
        x = audio[t].double()
        x = x / x.pow(2).mean().sqrt().clamp_min(1e-12)
        x = x.repeat(n // x.shape[0] + 1)
        start = rng.randrange(x.shape[0] - n + 1)
        out += x[start:start + n]
    return out.float()


def build(data_dir: str | Path, out_root: str | Path, seed: int = 0, sets=SETS, num_clips: int = 10) -> dict[str, Path]:
    """Write the evaluation sets ``sets`` of the Kaldi data dir ``data_dir`` under ``out_root``; returns
    ``{set: data dir}``."""
    from asr.data.augment import add_noise, band_limit, coloured_noise, reverberate, room_impulse_response
    from asr.data.datadir import Utterance, check_data_dir, write_data_dir
    from asr.features.audio import load_audio, resample_waveform

    torch.set_num_threads(1)  # one thread: the same samples on any machine
    unknown = sorted(set(sets) - set(SETS))
    if unknown:
        raise ValueError(f"unknown set(s) {unknown}; known: {', '.join(SETS)}")
    utts, _ = check_data_dir(data_dir, max_bad_fraction=0.0)
    utts = [u for u in utts if u.text]
    if not utts:
        raise ValueError(f"{data_dir}: no utterance with a transcript")
    audio = {u.utt_id: load_audio(u.wav, SR) for u in utts}
    out_root = Path(out_root)
    written: dict[str, Path] = {}

    def emit(name: str, rows: list[tuple[str, torch.Tensor, int, str, str, str]]) -> None:
        """rows: (utt id, waveform, sample rate, text, speaker, info)."""
        d = out_root / name
        entries, info = [], []
        for uid, wav, rate, text, spk, what in rows:
            path = (d / "audio" / f"{uid}.flac").absolute()
            _write_flac(path, wav, rate)
            entries.append(Utterance(uid, str(path), text, spk, round(wav.shape[0] / rate, 3)))
            info.append(f"{uid} {what}")
        write_data_dir(entries, d)
        (d / "info").write_text("".join(f"{line}\n" for line in sorted(info)), encoding="utf-8")
        written[name] = d

    if "test_8k" in sets:
        emit("test_8k", [(u.utt_id, resample_waveform(audio[u.utt_id], SR, 8000), 8000, u.text, u.speaker, "resampled to 8000 Hz") for u in utts])
    for name, snr in (("test_noise10", 10.0), ("test_noise0", 0.0)):
        if name not in sets:
            continue
        rows = []
        for i, u in enumerate(utts):
            x = audio[u.utt_id]
            r = random.Random(f"{seed}:{name}:{u.utt_id}")
            if i % 2 == 0:
                kind, noise = "white", coloured_noise(x.shape[0], "white", torch.Generator().manual_seed(r.getrandbits(62)))
            else:
                kind, noise = "babble", _babble(utts, audio, i, x.shape[0], r)
            rows.append((u.utt_id, add_noise(x, noise, snr), SR, u.text, u.speaker, f"{kind} snr_db={snr:g}"))
        emit(name, rows)
    if "test_reverb" in sets:
        rirs = [room_impulse_response(SR, t60, seed * 1000 + k) for k, t60 in enumerate(ROOM_T60S)]
        emit("test_reverb", [(u.utt_id, reverberate(audio[u.utt_id], rirs[i % len(rirs)], SR), SR, u.text, u.speaker, f"room={i % len(rirs)} rt60={ROOM_T60S[i % len(rirs)]:g}") for i, u in enumerate(utts)])
    if "silence" in sets or "noise_only" in sets:
        speech_rms = float(np.median([float(a.pow(2).mean().sqrt()) for a in audio.values()]))
        for name in ("silence", "noise_only"):
            if name not in sets:
                continue
            rows = []
            for k in range(num_clips):
                r = random.Random(f"{seed}:{name}:{k}")
                n = int(round(r.uniform(1.0, 4.0) * 100)) * SR // 100
                uid = f"{name}-{k:03d}"
                if name == "silence":
                    level, kind = 10 ** (-70 / 20), "white"
                else:
                    level, kind = speech_rms, ("white", "pink", "brown", "babble")[k % 4]
                if kind == "babble":
                    noise = _babble(utts, audio, r.randrange(len(utts)), n, r, NOISE_ONLY_BABBLE_TALKERS)
                else:
                    noise = coloured_noise(n, kind, torch.Generator().manual_seed(r.getrandbits(62)))
                noise = noise / noise.pow(2).mean().sqrt().clamp_min(1e-12) * level
                what = f"babble of {min(NOISE_ONLY_BABBLE_TALKERS, len(utts) - 1)} talkers" if kind == "babble" else kind
                rows.append((uid, noise, SR, "", name, f"{what} rms_dbfs={20 * np.log10(level):.1f}"))
            emit(name, rows)
    return written


def summarize(decode_dir: str | Path, name: str) -> str:
    """One line ``eval_set=<name> key=value ...`` of a decoded (and, for speech sets, scored) set."""
    d = Path(decode_dir)
    meta = json.loads((d / "meta.json").read_text(encoding="utf-8")) if (d / "meta.json").is_file() else {}
    limits = f"length_limit={meta.get('n_length_limit', 'na')} no_speech={meta.get('n_no_speech', 'na')}"
    if name in EMPTY_SETS:
        hyps = [json.loads(line).get("hyp", "") for line in (d / "results.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
        words = sum(len(h.split()) for h in hyps)
        return f"eval_set={name} n_utts={len(hyps)} nonempty={sum(1 for h in hyps if h.strip())} words={words} {limits}"
    w = json.loads((d / "scoring" / "wer.json").read_text(encoding="utf-8"))
    return f"eval_set={name} n_utts={w['n_utts']} wer={w['wer']:.2f} cer={w['cer']:.2f} {limits}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the evaluation sets")
    b.add_argument("data_dir", help="the AN4 test Kaldi data dir (data/test)")
    b.add_argument("out_root", help="where the set folders go (data)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of {','.join(SETS)}")
    b.add_argument("--num_clips", type=int, default=10, help="clips in silence and noise_only")
    s = sub.add_parser("summarize", help="one parseable line of a decoded set")
    s.add_argument("decode_dir")
    s.add_argument("set")
    a = p.parse_args(argv)
    if a.cmd == "build":
        for name, d in build(a.data_dir, a.out_root, a.seed, tuple(x for x in a.sets.split(",") if x), a.num_clips).items():
            print(f"{name}: {d}")
    else:
        print(summarize(a.decode_dir, a.set))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the asr package when not installed
    sys.exit(main())
