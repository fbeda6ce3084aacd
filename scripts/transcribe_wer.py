"""WER/CER of ``asr-transcribe`` on an AN4 split: runs the console script over the split's audio files (as a user
would) and scores its ``path<TAB>text`` lines against the corpus transcription.

    python scripts/transcribe_wer.py --model models/an4_pblstm_x4 --an4_root $AN4_ROOT            # test: 130 files
    python scripts/transcribe_wer.py --model exp/x/checkpoints/avg5.ckpt --an4_root $AN4_ROOT --out hyps.tsv

Prints one summary line (``asr.cli.score.summary_line``); exits non-zero when asr-transcribe does.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from asr.cli.score import summary_line
from asr.data.an4 import parse_transcription_line
from asr.metrics.wer import score


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--an4_root", required=True, type=Path)
    ap.add_argument("--split", default="test", choices=["test", "train"])
    ap.add_argument("--out", type=Path, help="also write the asr-transcribe output here")
    ap.add_argument("extra", nargs="*", help="more asr-transcribe options, after --")
    a = ap.parse_args()
    etc = a.an4_root / "etc"
    ids = [x.strip() for x in (etc / f"an4_{a.split}.fileids").read_text().splitlines() if x.strip()]
    refs = dict(p for p in map(parse_transcription_line, (etc / f"an4_{a.split}.transcription").read_text().splitlines()) if p)
    wavs = [str(a.an4_root / "wav" / f"{i}.wav") for i in ids]
    proc = subprocess.run([sys.executable, "-m", "asr.cli.transcribe", "--model", a.model, "--list", "-", *a.extra],
                          input="\n".join(wavs) + "\n", capture_output=True, text=True)
    sys.stderr.write(proc.stderr)
    if a.out:
        a.out.write_text(proc.stdout, encoding="utf-8")
    hyps = {Path(p).stem: t for p, t in (line.split("\t", 1) for line in proc.stdout.splitlines())}
    utts = [Path(w).stem for w in wavs]
    print(summary_line(score([refs[u] for u in utts], [hyps.get(u, "") for u in utts]), a.model))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
