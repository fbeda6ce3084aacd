"""Diagnostics of one attention alignment: numbers that say *how* an attention decoder went wrong.

Every function takes the weights of one decoded utterance as written by ``asr-decode`` to ``attention.npz``:
an array ``(U + 1, S)`` whose row ``u < U`` is the decoder step that emitted token ``u`` and whose last row is
the step that emitted ``<eos>``; column ``s`` is encoder frame ``s`` (``frame_shift_s * subsampling`` seconds
long, 80 ms for the default pBLSTM x8). The ``<eos>`` row is left out of every diagnostic except where said.
Frames are counted in *encoder* frames throughout.

The diagnostics (`attention_diagnostics` computes them all):

* **monotonicity** — ``backward_jumps``: token steps whose attention peak (arg-max frame) moves back by more than
  ``tolerance`` frames; ``max_backward``/``max_forward``: the largest backward and forward peak jumps, in
  frames. Speech is read left to right, so a backward jump is a loop and a large forward jump skips audio.
* **diagonal focus** — the fraction of the token rows' attention mass within ``band`` of the straight line from
  the first to the last speech frame (the "diagonal" of guided attention, Tachibana et al. 2018,
  arXiv 1710.08969); ``focus``: the mean of the row maxima (the "focus rate" of FastSpeech, Ren et al. 2019,
  arXiv 1905.09263).
* **entropy** — the mean over token rows of the attention entropy, in nats (0 = one frame; ``log S`` = uniform).
* **coverage gap** — the fraction of speech frames that no token attends (no row puts ``attend_threshold`` of
  its weight within ``dilate`` frames of it). Deleted words leave such gaps.
* **repeats / stalls** — ``repeats``: consecutive token pairs whose attention distributions overlap by more than
  ``overlap_threshold`` (histogram intersection ``sum_s min(a_u, a_u+1)``: the same frames attended by two
  tokens); ``max_stall``: the longest run of consecutive tokens emitted with one peak frame (tokens emitted
  without moving).
* **early stop** — the fraction of speech frames after the last token's peak that no token attends: audio left
  unattended when ``<eos>`` was emitted.
* **CTC/attention disagreement** (`ctc_disagreement`) — with a CTC branch: the token edit distance between the
  greedy CTC path and the attention hypothesis over the hypothesis length, and the mean distance between the
  attention peak and the CTC spike of the tokens both agree on, in frames.

`speech_frames` turns an fbank matrix into the speech mask these use (an energy threshold, not a trained VAD);
without one every frame counts as speech. `roc_auc` ranks a diagnostic's power to separate correct from wrong
utterances; `word_error_classes` counts the word errors by kind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "AttentionDiagnostics",
    "DIAGNOSTICS",
    "attention_diagnostics",
    "peak_frames",
    "row_entropy",
    "speech_frames",
    "ctc_disagreement",
    "roc_auc",
    "word_error_classes",
]

#: Diagnostic name -> (short label, higher value is worse?). The order of the report's columns.
DIAGNOSTICS: dict[str, tuple[str, bool]] = {
    "backward_jumps": ("backward jumps", True),
    "max_backward": ("max backward jump (frames)", True),
    "max_forward": ("max forward jump (frames)", True),
    "diagonal_focus": ("diagonal focus", False),
    "focus": ("focus rate", False),
    "entropy": ("mean entropy (nats)", True),
    "coverage_gap": ("coverage gap", True),
    "repeats": ("repeats", True),
    "max_stall": ("max stall (tokens)", True),
    "early_stop": ("early stop", True),
    "ctc_edit": ("CTC/attention token edits", True),
    "ctc_offset": ("CTC spike - attention peak (frames)", True),
}


def _check(weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"attention weights must be (U + 1, S) with U >= 0 and S >= 1, got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("attention weights must be finite and >= 0")
    return w


def peak_frames(weights: np.ndarray) -> np.ndarray:
    """Arg-max encoder frame of each row of ``weights`` ``(R, S)`` -> int64 ``(R,)`` (first maximum on ties)."""
    w = np.asarray(weights)
    return w.argmax(1).astype(np.int64) if w.shape[0] else np.zeros(0, np.int64)


def row_entropy(weights: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of ``weights`` ``(R, S)``, each row renormalised to sum 1 -> ``(R,)``.

    A row of zeros (an ``<eos>`` row padded by ``asr-decode`` after a length-limited search) gives ``log S``.
    """
    w = np.asarray(weights, dtype=np.float64)
    s = w.sum(1, keepdims=True)
    p = np.where(s > 0, w / np.where(s > 0, s, 1.0), 1.0 / w.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return h


def speech_frames(fbank: np.ndarray, subsampling: int, n_enc_frames: int, margin: float = 0.3) -> np.ndarray:
    """Boolean mask ``(n_enc_frames,)`` of the encoder frames that hold speech, from log-mel fbank.

    The energy of input frame ``t`` is the mean of its log-mel values; a frame is speech when its energy exceeds
    ``floor + margin * (peak - floor)`` with ``floor`` the 10th and ``peak`` the 99th percentile of the
    utterance's frame energies (a fixed energy threshold, enough to tell silence from speech on read speech such as
    AN4; not a trained voice activity detector). Encoder frame ``s`` covers input frames
    ``[s * subsampling, (s + 1) * subsampling)`` and is speech when any of them is.

    Parameters
    ----------
    fbank : ndarray ``(T, F)``
        Log-mel filterbank of the utterance (``asr.features.fbank.compute_fbank``), 10 ms frames.
    subsampling : int
        Input frames per encoder frame.
    n_enc_frames : int
        Encoder frames ``S`` of the attention matrix.
    margin : float
        Fraction of the floor-to-peak range above the floor.

    Raises
    ------
    ValueError
        ``fbank`` not 2-D or empty, ``subsampling < 1``.
    """
    x = np.asarray(fbank, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"fbank must be (T, F) with T >= 1, got shape {x.shape}")
    if subsampling < 1:
        raise ValueError(f"subsampling must be >= 1, got {subsampling}")
    e = x.mean(1)
    floor, peak = np.percentile(e, 10), np.percentile(e, 99)
    speech = e > floor + margin * (peak - floor)
    need = n_enc_frames * subsampling
    speech = np.pad(speech, (0, max(0, need - speech.shape[0])))[:need]
    return speech.reshape(n_enc_frames, subsampling).any(1)


@dataclass(frozen=True)
class AttentionDiagnostics:
    """The diagnostics of one alignment (module docstring for the definitions); frames are encoder frames."""

    backward_jumps: int
    max_backward: int
    max_forward: int
    diagonal_focus: float
    focus: float
    entropy: float
    coverage_gap: float
    repeats: int
    max_stall: int
    early_stop: float

    def as_dict(self) -> dict[str, Any]:
        """Plain ``dict`` (field name -> value) for JSON."""
        return asdict(self)


def _attended(w: np.ndarray, threshold: float, dilate: int) -> np.ndarray:
    """Frames ``(S,)`` within ``dilate`` frames of a frame that some row weights ``>= threshold``."""
    hit = (w >= threshold).any(0) if w.shape[0] else np.zeros(w.shape[1], bool)
    if dilate > 0 and hit.any():
        idx = np.flatnonzero(hit)
        out = np.zeros_like(hit)
        for d in range(-dilate, dilate + 1):
            j = idx + d
            out[j[(j >= 0) & (j < hit.shape[0])]] = True
        hit = out
    return hit


def attention_diagnostics(
    weights: np.ndarray,
    speech: np.ndarray | None = None,
    tolerance: int = 1,
    band: float = 0.15,
    attend_threshold: float = 0.1,
    dilate: int = 1,
    overlap_threshold: float = 0.5,
) -> AttentionDiagnostics:
    """All attention diagnostics of one decoded utterance.

    Parameters
    ----------
    weights : ndarray ``(U + 1, S)``
        Attention weights, rows = emitted tokens then ``<eos>`` (``attention.npz`` of ``asr-decode``).
    speech : ndarray of bool ``(S,)``, optional
        Speech mask of the encoder frames (`speech_frames`); default: every frame is speech.
    tolerance : int
        Backward peak moves of at most this many frames are not counted as jumps (the peak wobbles by one
        frame on a flat attention).
    band : float
        Half-width of the diagonal band, as a fraction of the speech span (first to last speech frame), at least
        one frame.
    attend_threshold, dilate : float, int
        A frame is attended when a token row puts at least ``attend_threshold`` on a frame at most ``dilate``
        frames away.
    overlap_threshold : float
        Histogram intersection above which two consecutive tokens count as a repeat.

    Returns
    -------
    AttentionDiagnostics
        With no token (``U == 0``): no jumps, focus 0, entropy of the ``<eos>`` row, coverage gap and early stop
        1 when there is speech (nothing was attended).

    Raises
    ------
    ValueError
        Weights not ``(U + 1, S)``, negative or not finite, or ``speech`` of another length than ``S``.
    """
    w = _check(weights)
    S = w.shape[1]
    sp = np.ones(S, bool) if speech is None else np.asarray(speech, bool)
    if sp.shape != (S,):
        raise ValueError(f"speech mask has shape {sp.shape}, expected ({S},) for attention of shape {w.shape}")
    if not sp.any():  # all silence by the energy threshold: judge against every frame instead
        sp = np.ones(S, bool)
    tok = w[:-1]
    U = tok.shape[0]
    if U == 0:
        return AttentionDiagnostics(0, 0, 0, 0.0, 0.0, float(row_entropy(w)[0]), 1.0, 0, 0, 1.0)
    sums = tok.sum(1, keepdims=True)
    p = np.where(sums > 0, tok / np.where(sums > 0, sums, 1.0), 0.0)
    peaks = peak_frames(p)
    steps = np.diff(peaks)
    backward = int((steps < -tolerance).sum())
    max_back = int(max(0, -steps.min())) if steps.size else 0
    max_fwd = int(max(0, steps.max())) if steps.size else 0

    speech_idx = np.flatnonzero(sp)
    s0, s1 = speech_idx[0], speech_idx[-1]
    centre = s0 + (np.arange(U) + 0.5) / U * (s1 - s0 + 1) - 0.5  # (U,) diagonal position of each token
    half = max(1.0, band * (s1 - s0 + 1))
    in_band = np.abs(np.arange(S)[None, :] - centre[:, None]) <= half
    diag = float((p * in_band).sum() / max(p.sum(), 1e-12))
    focus = float(p.max(1).mean())
    entropy = float(row_entropy(tok).mean())

    att = _attended(p, attend_threshold, dilate)
    gap = float((sp & ~att).sum() / sp.sum())
    tail = sp.copy()
    tail[: peaks.max() + 1] = False
    early = float((tail & ~att).sum() / sp.sum())

    overlap = np.minimum(p[:-1], p[1:]).sum(1) if U > 1 else np.zeros(0)
    repeats = int((overlap > overlap_threshold).sum())
    stall = run = 1
    for d in steps:
        run = run + 1 if d == 0 else 1
        stall = max(stall, run)
    return AttentionDiagnostics(backward, max_back, max_fwd, diag, focus, entropy, gap, repeats, stall, early)


def _edit_alignment(a: Sequence[Any], b: Sequence[Any]) -> tuple[int, list[tuple[int, int]]]:
    """Levenshtein distance between sequences ``a`` and ``b`` and the index pairs ``(i, j)`` of equal
    elements matched on one best path (unit costs)."""
    n, m = len(a), len(b)
    d = np.zeros((n + 1, m + 1), np.int64)
    d[:, 0] = np.arange(n + 1)
    d[0, :] = np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (a[i - 1] != b[j - 1]))
    pairs, i, j = [], n, m
    while i > 0 and j > 0:
        if d[i, j] == d[i - 1, j - 1] + (a[i - 1] != b[j - 1]):
            if a[i - 1] == b[j - 1]:
                pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif d[i, j] == d[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return int(d[n, m]), pairs[::-1]


def ctc_disagreement(
    att_tokens: Sequence[Any], att_peaks: Sequence[int], ctc_tokens: Sequence[Any], ctc_frames: Sequence[int]
) -> tuple[float, float | None, list[int | None]]:
    """How far the greedy CTC path and the attention decoder disagree on one utterance.

    Parameters
    ----------
    att_tokens, att_peaks : sequences of length U
        The attention hypothesis's tokens (ids or pieces) and the attention peak frame of each.
    ctc_tokens, ctc_frames : sequences of length K
        The greedy CTC path's tokens (same kind) and the encoder frame at which each starts
        (`asr.decoding.ctc.ctc_greedy`).

    Returns
    -------
    edit : float
        Token edit distance between the two hypotheses divided by ``max(U, 1)``.
    offset : float or None
        Mean ``|attention peak - CTC spike|`` in encoder frames over the tokens matched on the edit alignment;
        None when none matches.
    spike_of_token : list of (int or None), length U
        The CTC spike frame matched to each attention token (None when unmatched).

    Raises
    ------
    ValueError
        Lengths of tokens and frames differ.
    """
    if len(att_tokens) != len(att_peaks) or len(ctc_tokens) != len(ctc_frames):
        raise ValueError(f"tokens and frames differ in length: attention {len(att_tokens)}/{len(att_peaks)}, CTC {len(ctc_tokens)}/{len(ctc_frames)}")
    dist, pairs = _edit_alignment(list(att_tokens), list(ctc_tokens))
    spikes: list[int | None] = [None] * len(att_tokens)
    for i, j in pairs:
        spikes[i] = int(ctc_frames[j])
    offsets = [abs(int(att_peaks[i]) - int(ctc_frames[j])) for i, j in pairs]
    return dist / max(len(att_tokens), 1), (float(np.mean(offsets)) if offsets else None), spikes


def roc_auc(scores: Sequence[float], wrong: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` as a detector of ``wrong`` utterances (Mann-Whitney U statistic).

    1.0: every wrong utterance scores higher than every correct one; 0.5: no separation; 0.0: perfectly
    separating the other way round. Ties count one half. NaN scores are left out.

    Returns
    -------
    float or None
        None when one of the two classes is empty.
    """
    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(wrong, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"{x.shape[0]} scores for {y.shape[0]} labels")
    keep = ~np.isnan(x)
    x, y = x[keep], y[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.shape[0])
    xs = x[order]
    i = 0
    while i < xs.shape[0]:  # average ranks over ties (1-based)
        j = i
        while j + 1 < xs.shape[0] and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def word_error_classes(steps: Sequence[tuple[str, str | None, str | None]]) -> Counter:
    """Count the word errors of one alignment by class.

    Parameters
    ----------
    steps : sequence of ``(op, ref word, hyp word)``
        Word alignment with ``op`` in ``C``/``S``/``D``/``I`` (`asr.metrics.wer.word_alignment`).

    Returns
    -------
    collections.Counter
        ``substitution``, ``deletion``, ``insertion``, and the sub-classes ``repeated-word deletion`` (a deleted
        reference word equal to a neighbouring reference word: ``EIGHT EIGHT FOUR`` -> ``EIGHT FOUR``) and
        ``repeated-word insertion`` (an inserted word equal to a neighbouring hypothesis word), each also counted
        in its class.
    """
    out: Counter = Counter()
    refs = [(k, r) for k, (op, r, _) in enumerate(steps) if r is not None]
    hyps = [(k, h) for k, (op, _, h) in enumerate(steps) if h is not None]
    ref_pos = {k: n for n, (k, _) in enumerate(refs)}
    hyp_pos = {k: n for n, (k, _) in enumerate(hyps)}
    for k, (op, r, h) in enumerate(steps):
        if op == "S":
            out["substitution"] += 1
        elif op == "D":
            out["deletion"] += 1
            n = ref_pos[k]
            if any(0 <= m < len(refs) and refs[m][1] == r for m in (n - 1, n + 1)):
                out["repeated-word deletion"] += 1
        elif op == "I":
            out["insertion"] += 1
            n = hyp_pos[k]
            if any(0 <= m < len(hyps) and hyps[m][1] == h for m in (n - 1, n + 1)):
                out["repeated-word insertion"] += 1
        elif op != "C":
            raise ValueError(f"unknown alignment op {op!r}")
    return out
