"""asr-transcribe: transcribe audio files with a model directory (default: the AN4 model shipped in models/).

    asr-transcribe tests/data/an4/wav/an4test_clstk/fjlp/an419-fjlp-b.wav     # path<TAB>text, one line per file
    asr-transcribe --json a.wav b.flac                  # one JSON object per line (asr.inference.Result)
    asr-transcribe --list files.txt                     # one path per line ("-": standard input)
    find audio -name '*.wav' | asr-transcribe --list -
    asr-transcribe --model my_model_dir --beam-size 4 --ctc-weight 0.5 a.wav
    asr-transcribe --model models/an4_pblstm_x4_channel --encoder-dtype bfloat16 call_8khz.wav

Decoding is :meth:`asr.inference.Speech2Text.stream` (the engine of ``asr-decode``, :mod:`asr.decoding.engine`):
recordings of any length (long ones are decoded in segments cut at pauses), results printed in input order as they
are decoded. A file that cannot be transcribed (missing, not audio, too short, ...) gets ``path<TAB>error`` on
standard error and the others are still transcribed; the exit status is 1 only when every input failed (2: usage
errors such as ``--batch-size 0``, ``--nbest`` above the beam size or ``--device cuda`` without a GPU, each a
one-line message; no input). ``--nbest`` without ``--json`` is ignored with a one-line warning. ``--threads``: torch
CPU threads, 0 (default) = the cores not busy with other processes. ``--encoder-dtype bfloat16``: the encoder in bf16
(the decoder and scores stay float32), about 2.5x faster encoding on a CPU with AMX / AVX512-BF16
(:meth:`asr.models.asr_model.AttentionASRModel.set_encoder_dtype`). ``--model`` also takes a ``.ckpt`` checkpoint or a Hugging Face repository id (with
huggingface_hub).

File names (:mod:`asr.utils.names`): in ``path<TAB>text`` and ``path<TAB>error`` lines the path is escaped (``\\`` ->
``\\\\``, TAB -> ``\\t``, newline -> ``\\n``, other control characters and bytes that are not UTF-8 -> ``\\xNN``), so
every line splits into exactly two fields at its first TAB; ``asr.utils.names.unescape_field`` gives the name back.
``--json`` lines carry the path by JSON's own quoting. Names that are not UTF-8 (on the command line or in a
``--list`` file) are opened as the OS gives them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from asr.utils.names import escape_field, json_line, read_path_list

__all__ = ["DEFAULT_MODEL", "main"]

#: The AN4 model shipped with the repository (``models/an4_pblstm_x4``), overridable with ``$ASR_MODEL``.
DEFAULT_MODEL = Path(os.environ.get("ASR_MODEL", Path(__file__).resolve().parents[2] / "models" / "an4_pblstm_x4"))


def _inputs(files: Sequence[str], list_file: str | None) -> list[str]:
    paths = list(files)
    if list_file is not None:
        paths += read_path_list(list_file)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``asr-transcribe`` (module docstring); returns the exit status."""
    ap = argparse.ArgumentParser(prog="asr-transcribe", description="Transcribe audio files (path<TAB>text per line).")
    ap.add_argument("files", nargs="*", help="audio files (any format libsndfile reads; resampled to the model's rate)")
    ap.add_argument("--list", dest="list_file", help="a file with one audio path per line; - = standard input")
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help=f"model directory, .ckpt or hub repo id (default {DEFAULT_MODEL})")
    ap.add_argument("--json", action="store_true", help="one JSON object per file: text, tokens, score, words and segments with seconds")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--beam-size", type=int)
    ap.add_argument("--ctc-weight", type=float)
    ap.add_argument("--length-penalty", type=float)
    ap.add_argument("--nbest", type=int, default=1, help="with --json: the N best hypotheses")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 (default) = the cores not busy with other processes (OMP_NUM_THREADS wins)")
    ap.add_argument("--encoder-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the encoder's compute dtype; bfloat16 is 2-3x faster on CPUs with AMX / AVX512-BF16 (decoder and scores stay float32)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        paths = _inputs(args.files, args.list_file)
    except OSError as exc:
        print(f"asr-transcribe: cannot read the list {args.list_file}: {exc}", file=sys.stderr)
        return 2
    if not paths:
        ap.print_usage(sys.stderr)
        print("asr-transcribe: no input files", file=sys.stderr)
        return 2
    nbest = args.nbest
    if nbest != 1 and not args.json:
        print(f"asr-transcribe: --nbest {nbest} is ignored without --json (a plain line holds the best text only)", file=sys.stderr)
        nbest = 1
    from asr.inference import Speech2Text

    given = {k: v for k, v in (("beam_size", args.beam_size), ("ctc_weight", args.ctc_weight), ("length_penalty", args.length_penalty)) if v is not None}
    try:
        s2t = Speech2Text.from_pretrained(args.model, device=args.device, threads=args.threads, encoder_dtype=args.encoder_dtype, **given)
    except (FileNotFoundError, ValueError) as exc:
        print(f"asr-transcribe: cannot load the model: {exc}", file=sys.stderr)
        return 2
    try:  # the decoding engine (asr.decoding.engine): a bad file is an error result, not the end
        results = s2t.stream(paths, batch_size=args.batch_size, nbest=nbest, timestamps=args.json)
    except ValueError as exc:
        print(f"asr-transcribe: {exc}", file=sys.stderr)
        return 2
    n_failed = 0
    for p, r in zip(paths, results):
        if r.error is not None:  # the whole input, or some segments of a long recording
            print(f"{escape_field(p)}\t{r.error}", file=sys.stderr, flush=True)
            if not r.tokens:
                n_failed += 1
                continue
        print(json_line(r.to_dict()) if args.json else f"{escape_field(p)}\t{r.text}", flush=True)
    return 1 if n_failed == len(paths) else 0


if __name__ == "__main__":
    sys.exit(main())
