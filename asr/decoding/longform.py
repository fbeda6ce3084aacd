"""Long-form decoding: split long recordings at pauses, decode the segments as utterances, stitch the results.

An attention decoder trained on utterances of a few seconds neither aligns nor stays in memory bounds on a
recording of many minutes (beam search memory and the CTC prefix scorer's time grow with ``S x L``, encoder
frames times output length). Recordings longer than ``max_s`` are therefore cut into segments of at most
``max_s`` seconds, each cut placed at the quietest point (lowest smoothed frame energy) between ``min_s`` and
``max_s`` after the previous cut, which in speech is a pause between words. The energy is the mean log-mel
energy of the Kaldi fbank frames (10 ms shift) the decoder reads anyway, smoothed over ``smooth_s``; no voice
activity model or extra dependency is needed (Silero VAD would need its weights, webrtcvad a C extension;
CTC segmentation would need the whole recording's encoder output first, the memory this module avoids).
Fbank frames depend only on their own 25 ms window, so slicing the recording's fbank gives (up to the two
edge frames) the fbank of the sliced audio.

Segment ``k`` of utterance ``u`` is decoded as utterance ``segment_id(u, k)``; :func:`stitch` joins the
segments' rows into one row per recording whose ``segments`` list holds each segment's id, start and end
(seconds), hypothesis, score and tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Segment", "SegmentOptions", "find_segments", "segment_id", "stitch", "expand_segments"]


@dataclass(frozen=True)
class SegmentOptions:
    """Where to cut a long recording (all in seconds).

    Attributes
    ----------
    max_s : float
        Recordings longer than this are split; every segment is at most this long. 0 disables splitting.
        The default 6 s (with ``min_s`` 3 s) is about the longest AN4 utterance the recipe's model is trained
        on: on the 357 s AN4 test set concatenated into one recording (default model, beam 10 + CTC 0.3, 2-core
        CPU) segments of at most 4 / 5 / 6 / 8 / 10 / 20 s gave WER 12.8 / 12.7 / 12.8 / 16.3 / 17.6 / 26.7 %
        (the attention decoder drifts or stops early on segments much longer than its training utterances) at
        a decode time that grows with segment length (attention and CTC prefix scoring cost ``O(S)`` per
        output token): RTF 0.024 / 0.027 / 0.035 / 0.043 / 0.065 / 0.138 (1 thread).
    min_s : float
        A cut is placed at least this far after the previous one (so segments are ``min_s``-``max_s`` long,
        the last one possibly shorter, but at least ``min_tail_s``).
    smooth_s : float
        Width of the moving average over the frame energy (a pause is a stretch of low energy, not one frame).
    min_tail_s : float
        Shortest last segment.
    frame_shift_s : float
        Feature frame shift.

    Raises
    ------
    ValueError
        A negative or non-finite value, ``min_s > max_s`` or ``frame_shift_s <= 0``.
    """

    max_s: float = 6.0
    min_s: float = 3.0
    smooth_s: float = 0.3
    min_tail_s: float = 1.0
    frame_shift_s: float = 0.01

    def __post_init__(self) -> None:
        for name in ("max_s", "min_s", "smooth_s", "min_tail_s", "frame_shift_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not float("-inf") < float(v) < float("inf") or v < 0:
                raise ValueError(f"segment option {name} must be a finite number >= 0, got {v!r}")
        if self.frame_shift_s <= 0:
            raise ValueError(f"frame_shift_s must be > 0, got {self.frame_shift_s}")
        if self.max_s and self.min_s > self.max_s:
            raise ValueError(f"segment min_s {self.min_s} > max_s {self.max_s}")

    def frames(self, seconds: float) -> int:
        """``seconds`` in feature frames (rounded)."""
        return int(round(seconds / self.frame_shift_s))


def find_segments(feats: Tensor, opts: SegmentOptions) -> list[tuple[int, int]]:
    """Cut points of one recording.

    Parameters
    ----------
    feats : Tensor
        ``(T, F)`` log-mel fbank frames of the whole recording.
    opts : SegmentOptions

    Returns
    -------
    list of ``(start, end)`` frame indices (end exclusive) covering ``[0, T)`` in order; ``[(0, T)]`` when
    ``T`` is at most ``max_s`` (or ``max_s`` is 0).
    """
    t = int(feats.shape[0])
    max_f = opts.frames(opts.max_s)
    if max_f <= 0 or t <= max_f:
        return [(0, t)]
    min_f, tail = min(opts.frames(opts.min_s), max_f - 1), max(1, opts.frames(opts.min_tail_s))
    energy = feats.float().mean(-1)
    w = max(1, opts.frames(opts.smooth_s))
    if w > 1:  # centred moving average, edges padded with the edge value
        padded = torch.cat([energy[:1].expand(w // 2), energy, energy[-1:].expand(w - 1 - w // 2)])
        energy = padded.unfold(0, w, 1).mean(-1)
    segs, start = [], 0
    while t - start > max_f:
        lo = start + max(1, min(min_f, (t - start) // 2))
        hi = min(start + max_f, t - tail)
        if hi <= lo:
            hi = lo + 1
        cut = lo + int(torch.argmin(energy[lo:hi]))
        segs.append((start, cut))
        start = cut
    segs.append((start, t))
    return segs


def segment_id(utt_id: str, k: int) -> str:
    """Utterance id of segment ``k`` of ``utt_id`` (``<utt_id>-seg0003``)."""
    return f"{utt_id}-seg{k:04d}"


def stitch(utt_id: str, ref: str, seg_rows: Sequence[dict[str, Any] | None], bounds: Sequence[tuple[int, int]], frame_shift_s: float) -> dict[str, Any]:
    """One results row for a recording decoded as segments.

    Parameters
    ----------
    utt_id, ref : the recording's id and reference (``""`` when unknown).
    seg_rows : the segments' decode rows in time order (``hyp``, ``score``, ``norm_score``, ``tokens``,
        ``n_frames``, ``enc_frames``), None for a segment that failed.
    bounds : the segments' ``(start, end)`` feature frames.
    frame_shift_s : feature frame shift (seconds).

    Returns
    -------
    dict
        ``hyp`` the segments' hypotheses joined with a space, ``score`` their sum, ``norm_score`` their mean,
        ``tokens`` concatenated, ``n_frames`` the recording's frames, ``enc_frames`` the sum, and
        ``segments``: per segment ``seg_id``, ``start`` and ``end`` (seconds), ``hyp``, ``score``, ``tokens``
        (``"error": true`` and no hypothesis for a failed one); ``failed_segments`` counts those.
    """
    segs, hyps, tokens = [], [], []
    ok = [r for r in seg_rows if r is not None]
    for k, (row, (s, e)) in enumerate(zip(seg_rows, bounds)):
        seg = {"seg_id": segment_id(utt_id, k), "start": round(s * frame_shift_s, 3), "end": round(e * frame_shift_s, 3)}
        if row is None:
            seg["error"] = True
        else:
            seg.update(hyp=row["hyp"], score=row["score"], tokens=row["tokens"])
            if row["hyp"]:
                hyps.append(row["hyp"])
            tokens.extend(row["tokens"])
        segs.append(seg)
    return {
        "utt_id": utt_id,
        "ref": ref,
        "hyp": " ".join(hyps),
        "score": round(sum(r["score"] for r in ok), 4),
        "norm_score": round(sum(r["norm_score"] for r in ok) / len(ok), 4) if ok else 0.0,
        "tokens": tokens,
        "n_frames": bounds[-1][1] - bounds[0][0],
        "enc_frames": sum(r["enc_frames"] for r in ok),
        "segments": segs,
        "failed_segments": len(seg_rows) - len(ok),
    }


def expand_segments(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a ``results.jsonl`` with every long-form row replaced by one row per decoded segment
    (``utt_id`` = segment id, ``ref`` empty, ``hyp``, ``tokens``): the units ``attention.npz`` holds weights
    for (attention plots are per segment)."""
    out: list[dict[str, Any]] = []
    for r in rows:
        if not r.get("segments"):
            out.append(r)
            continue
        out.extend({"utt_id": s["seg_id"], "ref": "", "hyp": s["hyp"], "tokens": s["tokens"], "start": s["start"], "end": s["end"]} for s in r["segments"] if not s.get("error"))
    return out
