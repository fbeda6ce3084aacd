"""Difference between the project's fbank (torchaudio.compliance.kaldi) and kaldi-native-fbank on real audio.

kaldi-native-fbank (k2-fsa, C++ port of Kaldi's feature code) is what would replace torchaudio's fbank if
torchaudio went away. It is not a dependency; install it beside the project to run this:

    pip install --target /tmp/knf kaldi-native-fbank
    PYTHONPATH=/tmp/knf python scripts/compare_fbank.py tests/data/an4/wav

Prints per file the frame counts and the max / mean absolute difference of the log-mel energies (natural log),
then the totals. Both are configured as the project's front end: 80 bins, 25 ms / 10 ms, Povey window, no dither,
snip_edges, energy floor 0, samples on the 16-bit scale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asr.features.fbank import FbankOptions, compute_fbank


def knf_fbank(wav: np.ndarray, opts: FbankOptions) -> np.ndarray:
    """``(T, F)`` log-mel fbank of ``wav`` (float, [-1, 1]) by kaldi-native-fbank with the project's settings."""
    import kaldi_native_fbank as knf

    o = knf.FbankOptions()
    o.frame_opts.samp_freq = opts.sample_rate
    o.frame_opts.frame_length_ms = opts.frame_length_ms
    o.frame_opts.frame_shift_ms = opts.frame_shift_ms
    o.frame_opts.dither = opts.dither
    o.frame_opts.snip_edges = True
    o.frame_opts.window_type = "povey"
    o.mel_opts.num_bins = opts.num_mel_bins
    o.energy_floor = 0.0
    fb = knf.OnlineFbank(o)
    fb.accept_waveform(opts.sample_rate, (wav * 32768.0).tolist())
    fb.input_finished()
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="audio files or folders (searched for *.wav / *.flac)")
    args = ap.parse_args(argv)
    files = []
    for p in map(Path, args.paths):
        files += sorted([*p.rglob("*.wav"), *p.rglob("*.flac")]) if p.is_dir() else [p]
    opts = FbankOptions()
    max_all, sum_all, n_all = 0.0, 0.0, 0
    for f in files:
        x, sr = sf.read(f, dtype="float32")
        assert sr == opts.sample_rate, f"{f}: {sr} Hz, expected {opts.sample_rate}"
        a = compute_fbank(torch.from_numpy(x), opts).numpy()
        b = knf_fbank(x, opts)
        d = np.abs(a - b)
        print(f"{f.name}\tframes {a.shape[0]} / {b.shape[0]}\tmax |diff| {d.max():.2e}\tmean |diff| {d.mean():.2e}")
        max_all, sum_all, n_all = max(max_all, float(d.max())), sum_all + float(d.sum()), n_all + d.size
    print(f"{len(files)} files, {n_all // opts.num_mel_bins} frames: max |diff| {max_all:.2e}, mean |diff| {sum_all / n_all:.2e} (log-mel, natural log)")


if __name__ == "__main__":
    main()
