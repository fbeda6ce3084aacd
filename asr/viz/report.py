"""The alignment report of a decode directory: a static HTML site (``asr-inspect``, :mod:`asr.cli.inspect`).

Layout of ``out_dir``::

    index.html            corpus scores, error classes, diagnostic AUCs, summary plots, the utterance table
    report.json           everything the pages show, per utterance (for scripts)
    assets/report.css     style; assets/report.js: table sorting and filtering (no network, no library)
    figures/*.png         summary plots (WER by duration, diagnostic histograms)
    utts/<id>.html        one page per utterance: audio player, spectrogram + attention on one time axis,
    utts/<id>.png           reference/hypothesis alignment, per-token table, diagnostics, heads grid
    audio/<id>.wav        16-bit PCM copy of the utterance's audio (browsers do not play NIST SPHERE)

(``<id>`` through `asr.cli.plot.safe_file_stem`.) Pages are rendered with Jinja2 templates
(``asr/viz/templates/``) and figures with matplotlib's Agg canvas; every asset is local, so the report opens
from disk with no server and no network, and it is one page per utterance, so it scales to thousands.

The decode directory is read with the decode folder's readers (:mod:`asr.decoding.results`: ``read_results``,
``read_meta``, ``read_attention``); recordings decoded in segments (long-form) are left out with a warning, their
attention being per segment (``asr-plot`` draws it); diagnostics come from :mod:`asr.viz.diagnostics`. Audio and spectrograms need the
Kaldi data dir that was decoded (``data_dir``; fbank from its dump ``feats`` or computed from the audio). The
model pass (per-token log-probabilities, the greedy CTC path of a CTC branch, the attention forced along the
reference with ``teacher_forced``, a Transformer decoder's per-layer/per-head grids) loads the decode's checkpoint
(``meta.json`` ``checkpoint``, relative to the current folder or to one of the decode folder's
up to four parents, i.e. the recipe folder asr-decode ran in; or ``ckpt``; :func:`asr.models.checkpoint.load_checkpoint`); for an ensemble decode it is the first member's.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from asr.cli.plot import EOS, safe_file_stem
from asr.decoding.results import ATTENTION, read_attention, read_meta, read_results
from asr.metrics.wer import per_utterance, score
from asr.utils.owned import OwnedOutput, check_output_dir
from asr.viz.alignment import _draw, _save_png
from asr.viz.diagnostics import (
    DIAGNOSTICS,
    attention_diagnostics,
    ctc_disagreement,
    peak_frames,
    roc_auc,
    row_entropy,
    speech_frames,
    word_error_classes,
)

__all__ = ["ModelOutputs", "model_pass", "utterance_figure", "build_report", "REPORT_TOOL"]

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
#: The report's tool name in its folder's ownership manifest (:mod:`asr.utils.owned`).
REPORT_TOOL = "asr-inspect"
SAMPLE_RATE = 16000
FIG_DPI = 90  # utterance figures: 900 px wide


@dataclass
class ModelOutputs:
    """What the model pass adds to one utterance (every field optional).

    Attributes
    ----------
    token_logprob : ndarray ``(U + 1,)``
        Log-probability (natural log) of each hypothesis token and of ``<eos>`` under the attention decoder
        forced along the hypothesis.
    ctc_pieces, ctc_frames : list
        Greedy CTC path: its tokens and the encoder frame at which each starts.
    forced : ndarray ``(U_ref + 1, S)``; forced_pieces : list of str
        Attention of the decoder forced along the reference (tokens of the reference, then ``<eos>``).
    heads : ndarray ``(L, H, U + 1, S)``
        Transformer decoder: every layer's and head's cross-attention along the hypothesis.
    """

    token_logprob: np.ndarray | None = None
    ctc_pieces: list[str] | None = None
    ctc_frames: list[int] | None = None
    forced: np.ndarray | None = None
    forced_pieces: list[str] = field(default_factory=list)
    heads: np.ndarray | None = None


def model_pass(
    ckpt: str | Path, feats: dict[str, Any], rows: Sequence[dict[str, Any]], teacher_forced: bool = False, batch_size: int = 16,
) -> dict[str, ModelOutputs]:
    """Run the decode's model over its hypotheses (and references) for the report.

    Utterances are run in padded batches of similar length (the encoders and decoders mask padding, so each
    utterance's outputs are those of running it alone, up to float rounding).

    Parameters
    ----------
    ckpt : str or Path
        Training checkpoint (`asr.models.checkpoint.load_checkpoint`).
    feats : dict
        utt id -> un-normalised fbank ``(T, F)`` tensor (CMVN is inside the model).
    rows : sequence of dict
        ``results.jsonl`` rows (``utt_id``, ``ref``, ``tokens``); utterances without features are skipped.
    teacher_forced : bool
        Also force the decoder along the reference (`ModelOutputs.forced`).
    batch_size : int
        Utterances per forward pass.

    Returns
    -------
    dict
        utt id -> `ModelOutputs`.

    Raises
    ------
    FileNotFoundError, ValueError
        As `load_checkpoint`; ValueError when a hypothesis piece is not in the checkpoint's vocabulary (the
        message names the utterance: a decode of another model).
    """
    import torch
    from torch.nn.utils.rnn import pad_sequence

    from asr.models.checkpoint import load_checkpoint

    model, tok, _ = load_checkpoint(str(ckpt))
    unk = tok.sp.unk_id()
    todo = []
    for r in rows:
        u = r["utt_id"]
        if u not in feats:
            continue
        pieces = [str(p) for p in r.get("tokens", [])]
        ids = [tok.sp.piece_to_id(p) for p in pieces]
        if any(i == unk and p != tok.sp.id_to_piece(unk) for i, p in zip(ids, pieces)):
            raise ValueError(f"utterance {u!r}: hypothesis pieces {pieces} not in the vocabulary of {ckpt}")
        todo.append((u, torch.as_tensor(feats[u]).float(), ids, tok.encode(r["ref"]) if teacher_forced else []))
    todo.sort(key=lambda t: t[1].shape[0])

    def _ys_in(seqs: list[list[int]]):
        return pad_sequence([torch.tensor([model.sos_id] + s, dtype=torch.long) for s in seqs], batch_first=True, padding_value=model.pad_id)

    out: dict[str, ModelOutputs] = {}
    for b0 in range(0, len(todo), max(1, batch_size)):
        batch = todo[b0:b0 + max(1, batch_size)]
        xs_pad = pad_sequence([t[1] for t in batch], batch_first=True)
        xs_lens = torch.tensor([t[1].shape[0] for t in batch])
        with torch.no_grad():
            hs, hs_lens = model.encode(xs_pad, xs_lens)
            ys_in = _ys_in([t[2] for t in batch])
            logits, _ = model.decoder(hs, hs_lens, ys_in)
            logp = torch.log_softmax(logits.float(), -1)
            ctc = None
            if model.ctc is not None:
                from asr.decoding.ctc import ctc_greedy

                ctc = ctc_greedy(torch.log_softmax(model.ctc(hs).float(), -1), hs_lens, model.pad_id)
            fw = model.decoder(hs, hs_lens, _ys_in([t[3] for t in batch]))[1] if teacher_forced else None
            heads = model.decoder.cross_attention(hs, hs_lens, ys_in).float() if hasattr(model.decoder, "cross_attention") else None
        for b, (u, _, ids, ref_ids) in enumerate(batch):
            S, n = int(hs_lens[b]), len(ids) + 1
            mo = ModelOutputs()
            target = torch.tensor(ids + [model.eos_id])
            mo.token_logprob = logp[b, torch.arange(n), target].numpy()
            if ctc is not None:
                c_ids, _, c_frames = ctc[b]
                mo.ctc_pieces, mo.ctc_frames = tok.pieces(c_ids), list(c_frames)
            if fw is not None:
                mo.forced, mo.forced_pieces = fw[b, :len(ref_ids) + 1, :S].float().numpy(), tok.pieces(ref_ids) + [EOS]
            if heads is not None:
                mo.heads = heads[:, b, :, :n, :S].numpy()
            out[u] = mo
    return out


def _label(ax, text: str) -> None:
    """Left-aligned panel title; a plain Text artist (``set_title`` re-measures every tick label to place itself)."""
    ax.text(0.0, 1.01, text, transform=ax.transAxes, fontsize=8, ha="left", va="bottom")


def utterance_figure(
    weights: np.ndarray,
    tokens: Sequence[str],
    seconds_per_frame: float,
    fbank: np.ndarray | None = None,
    frame_shift_s: float = 0.01,
    ctc: tuple[Sequence[str], Sequence[int]] | None = None,
    forced: tuple[np.ndarray, Sequence[str]] | None = None,
) -> Figure:
    """Spectrogram, decoded attention, CTC spikes and forced attention on one time axis in seconds.

    Parameters
    ----------
    weights : ndarray ``(U + 1, S)``
        Decoded attention; the attention peak of each row is marked with a white dot.
    tokens : list of str, length ``U + 1``
        Row labels (hypothesis tokens then ``<eos>``).
    seconds_per_frame : float
        Encoder frame duration (``frame_shift_s * subsampling``).
    fbank : ndarray ``(T, F)``, optional
        Log-mel fbank drawn on top (input frames of ``frame_shift_s`` seconds).
    ctc : (pieces, frames), optional
        Greedy CTC path, drawn as labelled spikes at ``frame * seconds_per_frame`` below the attention.
    forced : (weights ``(U_ref + 1, S)``, tokens), optional
        Attention forced along the reference, drawn at the bottom.

    Returns
    -------
    matplotlib.figure.Figure
    """
    U = weights.shape[0]
    heights = ([1.4] if fbank is not None else []) + [max(1.4, 0.12 * U)]
    heights += [0.4] if ctc is not None else []
    heights += [max(1.4, 0.12 * forced[0].shape[0])] if forced is not None else []
    gaps = 0.3 * len(heights)
    total = sum(heights) + gaps + 0.5
    # Fixed margins instead of a layout engine: constrained layout costs more than the drawing itself.
    fig = Figure(figsize=(10.0, total))
    fig.subplots_adjust(left=0.09, right=0.99, top=1.0 - 0.25 / total, bottom=0.45 / total, hspace=gaps / sum(heights))
    axes = fig.subplots(len(heights), 1, sharex=True, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    k = 0
    end = weights.shape[1] * seconds_per_frame
    if fbank is not None:
        ax = axes[k]
        ax.imshow(np.asarray(fbank).T, aspect="auto", origin="lower", cmap="magma", interpolation="nearest",
                  extent=(0.0, fbank.shape[0] * frame_shift_s, 0, fbank.shape[1]))
        ax.set_ylabel("mel bin", fontsize=8)
        _label(ax, "log-mel fbank")
        end = max(end, fbank.shape[0] * frame_shift_s)
        k += 1
    ax = axes[k]
    _draw(ax, weights, tokens, seconds_per_frame, tick_labels=False)
    peaks = peak_frames(weights)
    ax.plot((peaks + 0.5) * seconds_per_frame, np.arange(U), "o", color="white", markersize=2.5, markeredgewidth=0)
    _label(ax, "decoded attention (dots: peak of each token)")
    ax.set_ylabel("")
    k += 1
    if ctc is not None:
        ax = axes[k]
        pieces, frames = ctc
        times = (np.asarray(frames, float) + 0.5) * seconds_per_frame
        ax.vlines(times, 0.0, 0.35, color="tab:red", linewidth=0.8)
        for p, t in zip(pieces, times):
            ax.text(t, 0.65, p, fontsize=7, ha="center", va="center")
        ax.set_ylim(0.0, 1.0)
        ax.set_yticks([])
        ax.set_ylabel("CTC", rotation=0, ha="right", va="center", fontsize=8)
        k += 1
    if forced is not None:
        ax = axes[k]
        _draw(ax, forced[0], forced[1], seconds_per_frame, tick_labels=False)
        _label(ax, "attention forced along the reference")
        ax.set_ylabel("")
        k += 1
    axes[-1].set_xlabel("time (s)", fontsize=8)
    axes[-1].set_xlim(0.0, end)
    return fig


def _render_png(job: tuple) -> None:
    """Worker: one utterance's figure (and heads grid) as PNG(s); ``job`` = (path, kwargs, heads job or None)."""
    path, kwargs, heads = job
    fig = utterance_figure(**kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=FIG_DPI, pil_kwargs={"compress_level": 1})  # zlib level 1: 3x faster, 1.3x larger
    if heads is not None:
        from asr.viz.alignment import plot_head_grid

        plot_head_grid(*heads)


def _summary_figures(utts: list[dict[str, Any]], aucs: dict[str, float | None], out: Path) -> list[str]:
    """WER by duration bucket and the diagnostic histograms (correct vs wrong); returns file names."""
    names = []
    dur = np.array([u["duration"] for u in utts])
    errs = np.array([u["errors"] for u in utts], float)
    nref = np.array([u["n_ref"] for u in utts], float)
    edges = np.unique(np.quantile(dur, np.linspace(0, 1, 6))) if len(utts) > 1 else np.array([dur.min(), dur.max() + 1e-3])
    if edges.size < 2:
        edges = np.array([edges[0], edges[0] + 1e-3])
    bucket = np.clip(np.searchsorted(edges, dur, side="right") - 1, 0, edges.size - 2)
    fig = Figure(figsize=(6.0, 3.0), layout="constrained")
    ax = fig.subplots()
    labels, wers, counts = [], [], []
    for b in range(edges.size - 1):
        m = bucket == b
        if m.any():
            labels.append(f"{edges[b]:.1f}-{edges[b + 1]:.1f}")
            wers.append(100.0 * errs[m].sum() / max(nref[m].sum(), 1.0))
            counts.append(int(m.sum()))
    bars = ax.bar(labels, wers, color="tab:blue")
    for bar, c in zip(bars, counts):
        ax.annotate(f"n={c}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("duration (s)")
    ax.set_ylabel("WER (%)")
    ax.set_title("WER by duration bucket", fontsize=10)
    _save_png(fig, out / "wer_by_duration.png")
    names.append("wer_by_duration.png")

    keys = [k for k in DIAGNOSTICS if any(u["diag"].get(k) is not None for u in utts)]
    cols = 4
    rows_n = (len(keys) + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 2.4 * rows_n), layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
    wrong = np.array([u["errors"] > 0 for u in utts])
    for ax, k in zip(axes, keys):
        v = np.array([np.nan if u["diag"].get(k) is None else u["diag"][k] for u in utts], float)
        ok = ~np.isnan(v)
        bins = np.histogram_bin_edges(v[ok], bins=15) if ok.any() else 10
        ax.hist([v[ok & ~wrong], v[ok & wrong]], bins=bins, label=["correct", "wrong"], color=["tab:green", "tab:red"], alpha=0.8)
        auc = aucs.get(k)
        ax.set_title(f"{DIAGNOSTICS[k][0]}" + (f"\nAUC {auc:.2f}" if auc is not None else ""), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    if keys:
        axes[0].legend(fontsize=7)
    _save_png(fig, out / "diagnostics_hist.png")
    names.append("diagnostics_hist.png")
    return names


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    return env


def _load_feats(rows, data_dir, feats_path, meta, feat_dim: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """utt id -> fbank ``(T, F)`` tensor and utt id -> `asr.data.datadir.Utterance` (empty without data_dir)."""
    import torch

    utts: dict[str, Any] = {}
    if data_dir:
        from asr.data.datadir import check_data_dir

        good, _ = check_data_dir(data_dir, max_bad_fraction=1.0)
        utts = {u.utt_id: u for u in good}
    feats: dict[str, Any] = {}
    wanted = {r["utt_id"] for r in rows}
    if feats_path:
        if not Path(feats_path).is_file():
            raise FileNotFoundError(f"features not found: {feats_path}")
        table = torch.load(feats_path, weights_only=True)
        feats = {u: table[u] for u in wanted if u in table}
    missing = [u for u in wanted if u not in feats and u in utts]
    if missing:
        from asr.features.audio import load_audio
        from asr.features.fbank import FbankOptions, compute_fbank

        opts = FbankOptions(num_mel_bins=feat_dim, frame_shift_ms=1000.0 * float(meta["frame_shift_s"]))
        for u in missing:
            feats[u] = compute_fbank(load_audio(utts[u].wav, opts.sample_rate), opts)
    return feats, utts


def _resolve_ckpt(ckpt: str | Path | None, meta: dict[str, Any], decode_dir: Path) -> Path | None:
    if ckpt:
        return Path(ckpt)
    named = meta.get("checkpoint")
    if not named:
        return None
    cands = [Path(named)]
    if not Path(named).is_absolute():
        # Relative to where asr-decode ran: the recipe folder, a few levels above <recipe>/exp/<name>/decode_*.
        cands += [p / named for p in (decode_dir, *list(decode_dir.resolve().parents)[:4])]
    for cand in cands:
        if cand.is_file():
            return cand
    return None


def build_report(
    decode_dir: str | Path,
    out_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    feats: str | Path | None = None,
    ckpt: str | Path | None = None,
    teacher_forced: bool = False,
    use_model: bool = True,
    audio: bool = True,
    jobs: int = 2,
    overwrite: bool = False,
) -> Path:
    """Write the HTML alignment report of a decode directory (module docstring for the layout).

    Parameters
    ----------
    decode_dir : str or Path
        ``asr-decode`` output (``results.jsonl``, ``attention.npz``, ``meta.json``).
    out_dir : str or Path, optional
        Report folder; default ``<decode_dir>/report``. The files an earlier report wrote there (listed in the
        folder's ownership manifest ``.asr-owned.json``, :mod:`asr.utils.owned`) are removed first; nothing else is.
    data_dir : str or Path, optional
        The decoded Kaldi data dir: speakers, durations, audio (copied as WAV) and, without ``feats``, fbank.
        Without it the report has no audio, no spectrogram, and every encoder frame counts as speech.
    feats : str or Path, optional
        fbank dump ``feats.pt`` of the decoded data (faster than recomputing from audio).
    ckpt : str or Path, optional
        Checkpoint for the model pass instead of ``meta.json``'s.
    teacher_forced : bool
        Also show the attention forced along the reference (needs the checkpoint and features).
    use_model : bool
        Run the model pass when the checkpoint and features are found (a missing checkpoint is a warning).
    audio : bool
        Copy the audio into the report.
    jobs : int
        Processes rendering the utterance figures (1: in this process).
    overwrite : bool
        Write into a non-empty ``out_dir`` that no ``asr-inspect`` wrote (no manifest): its files stay, files of
        the report's names (``index.html``, ``utts/<id>.html``, ...) are replaced.

    Returns
    -------
    Path
        ``<out_dir>/index.html``.

    Raises
    ------
    FileNotFoundError
        Missing ``results.jsonl``/``attention.npz``, ``feats`` or ``ckpt``; ``teacher_forced`` without a
        checkpoint.
    ValueError
        Attention missing for an utterance or of the wrong shape (the message names it), a malformed decode
        directory or data dir.
    asr.utils.owned.OutputDirError
        ``out_dir`` is not empty, was not written by ``asr-inspect`` and ``overwrite`` is false (checked first;
        a ``ValueError`` whose message is ``<out_dir>: <reason>``).
    """
    t0 = time.perf_counter()
    d = Path(decode_dir)
    out = Path(out_dir) if out_dir is not None else d / "report"
    check_output_dir(out, REPORT_TOOL, overwrite)
    rows = read_results(d)
    long_form = [r["utt_id"] for r in rows if r.get("segments")]
    if long_form:
        # Their attention is per segment (asr.decoding.longform), not per recording: asr-plot draws it.
        log.warning("%d recording(s) decoded in segments left out of the report (attention is per segment; use asr-plot), e.g. %s", len(long_form), long_form[:3])
        rows = [r for r in rows if not r.get("segments")]
        if not rows:
            raise ValueError(f"{d}: every utterance was decoded in segments (long-form); the report needs whole-utterance attention")
    meta = read_meta(d)
    shift = float(meta["frame_shift_s"])
    spf = shift * int(meta["subsampling"])
    if not (d / ATTENTION).is_file():
        raise FileNotFoundError(f"{d / ATTENTION} not found")
    stored = read_attention(d, [r["utt_id"] for r in rows])  # ValueError naming the ids without attention
    atts = {}
    for r in rows:
        u = r["utt_id"]
        w = np.asarray(stored[u], dtype=np.float32)
        if w.ndim != 2 or w.shape[0] != len(r.get("tokens", [])) + 1:
            raise ValueError(f"{d}: attention for {u!r} has shape {w.shape}, expected (len(tokens) + 1 = {len(r.get('tokens', [])) + 1}, enc_frames)")
        atts[u] = w
    ck = _resolve_ckpt(ckpt, meta, d) if (use_model or teacher_forced) else None
    if ckpt and not Path(ckpt).is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    if teacher_forced and ck is None:
        raise FileNotFoundError(f"teacher_forced=true needs the checkpoint: {meta.get('checkpoint')!r} of {d / 'meta.json'} not found; pass ckpt=")
    if use_model and ck is None:
        log.warning("checkpoint %r not found: no per-token log-probabilities, CTC path or forced attention (pass ckpt=)", meta.get("checkpoint"))
    feat_dim = 80
    fbanks, utt_info = _load_feats(rows, data_dir, feats, meta, feat_dim)
    t_feats = time.perf_counter()
    outs = model_pass(ck, fbanks, rows, teacher_forced) if ck is not None and fbanks else {}
    t_model = time.perf_counter()

    stats = {s["utt_id"]: s for s in per_utterance([r["ref"] for r in rows], [r["hyp"] for r in rows], [r["utt_id"] for r in rows])}
    corpus = score([r["ref"] for r in rows], [r["hyp"] for r in rows]).as_dict()
    # Only what an earlier asr-inspect wrote here is removed (its manifest); a user's files stay (asr.utils.owned).
    owner = OwnedOutput(out, REPORT_TOOL, overwrite).__enter__()
    try:
        for sub in ("utts", "figures", "assets", "audio"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        for name in ("report.css", "report.js"):
            shutil.copyfile(TEMPLATES / name, out / "assets" / name)

        utts: list[dict[str, Any]] = []
        jobs_list = []
        classes: Counter = Counter()
        confusions: Counter = Counter()
        for r in rows:
            u = r["utt_id"]
            st = stats[u]
            w = atts[u]
            S = w.shape[1]
            pieces = [str(p) for p in r.get("tokens", [])] + [EOS]
            fb = fbanks.get(u)
            fb_np = None if fb is None else np.asarray(fb, dtype=np.float32)
            sp = speech_frames(fb_np, int(meta["subsampling"]), S) if fb_np is not None else None
            diag = attention_diagnostics(w, sp).as_dict()
            mo = outs.get(u, ModelOutputs())
            peaks = peak_frames(w)
            ent = row_entropy(w)
            spikes: list[int | None] = [None] * len(pieces)
            diag["ctc_edit"] = diag["ctc_offset"] = None
            if mo.ctc_pieces is not None:
                edit, offset, sp_tok = ctc_disagreement(pieces[:-1], peaks[:-1], mo.ctc_pieces, mo.ctc_frames)
                diag["ctc_edit"], diag["ctc_offset"] = edit, offset
                spikes = sp_tok + [None]
            classes.update(word_error_classes(st["steps"]))
            for op, a, b in st["steps"]:
                if op != "C":
                    confusions[(op, a or "", b or "")] += 1
            info = utt_info.get(u)
            stem = safe_file_stem(u)
            duration = info.duration if info is not None and info.duration else r.get("n_frames", S * int(meta["subsampling"])) * shift
            tokens_table = [
                {"i": i, "piece": p, "peak_s": (peaks[i] + 0.5) * spf, "entropy": float(ent[i]),
                 "logprob": None if mo.token_logprob is None else float(mo.token_logprob[i]),
                 "ctc_s": None if spikes[i] is None else (spikes[i] + 0.5) * spf}
                for i, p in enumerate(pieces)
            ]
            audio_rel = None
            if audio and info is not None:
                import soundfile as sf

                from asr.features.audio import load_audio

                sf.write(out / "audio" / f"{stem}.wav", load_audio(info.wav, SAMPLE_RATE).numpy(), SAMPLE_RATE, subtype="PCM_16")
                audio_rel = f"../audio/{stem}.wav"
            utts.append({
                "utt_id": u, "stem": stem, "speaker": info.speaker if info is not None else "", "duration": float(duration),
                "n_tokens": len(pieces) - 1, "wer": None if st["wer"] is None else 100.0 * st["wer"],
                "cer": None if st["cer"] is None else 100.0 * st["cer"], "errors": st["errors"], "n_ref": st["n_ref"],
                "sub": st["sub"], "del": st["del"], "ins": st["ins"],
                "score": r.get("score"), "ref": st["ref"], "hyp": st["hyp"], "steps": st["steps"], "diag": diag,
                "tokens": tokens_table, "audio": audio_rel, "figure": f"{stem}.png",
                "heads": f"{stem}_heads.png" if mo.heads is not None else None,
            })
            kwargs = {"weights": w, "tokens": pieces, "seconds_per_frame": spf, "fbank": fb_np, "frame_shift_s": shift,
                      "ctc": (mo.ctc_pieces, mo.ctc_frames) if mo.ctc_pieces is not None else None,
                      "forced": (mo.forced, mo.forced_pieces) if mo.forced is not None else None}
            heads = (mo.heads, pieces, out / "utts" / f"{stem}_heads.png", shift, int(meta["subsampling"]), u) if mo.heads is not None else None
            jobs_list.append((out / "utts" / f"{stem}.png", kwargs, heads))

        t_pages = time.perf_counter()
        if jobs > 1 and len(jobs_list) > 8:
            with ProcessPoolExecutor(max_workers=jobs) as ex:
                list(ex.map(_render_png, jobs_list, chunksize=max(1, len(jobs_list) // (4 * jobs))))
        else:
            for j in jobs_list:
                _render_png(j)

        t_figs = time.perf_counter()
        wrong = [u["errors"] > 0 for u in utts]
        aucs = {k: roc_auc([np.nan if u["diag"].get(k) is None else u["diag"][k] for u in utts], wrong) for k in DIAGNOSTICS}
        aucs = {k: (None if v is None else (v if DIAGNOSTICS[k][1] else 1.0 - v)) for k, v in aucs.items()}
        present = [k for k in DIAGNOSTICS if any(u["diag"].get(k) is not None for u in utts)]
        # For reference beside the attention diagnostics: the model's own confidence (low = wrong).
        confidence = {
            "length-normalised beam score": [np.nan if r.get("norm_score") is None else -float(r["norm_score"]) for r in rows],
            "mean token log-prob (model pass)": [np.nan if not u["tokens"] or u["tokens"][0]["logprob"] is None
                                                 else -float(np.mean([t["logprob"] for t in u["tokens"]])) for u in utts],
        }
        baselines = {k: roc_auc(v, wrong) for k, v in confidence.items() if not np.isnan(v).all()}
        figures = _summary_figures(utts, aucs, out / "figures")
        worst = {k: sorted((u for u in utts if u["diag"].get(k) is not None), key=lambda u, k=k: u["diag"][k], reverse=DIAGNOSTICS[k][1])[:5] for k in present}
        env = _env()
        common = {"decode_dir": str(d), "meta": meta, "diag_keys": present, "diag_labels": {k: v[0] for k, v in DIAGNOSTICS.items()},
                  "checkpoint": str(ck) if ck is not None else None}
        page = env.get_template("utterance.html.j2")
        for i, u in enumerate(utts):
            prev_u = utts[i - 1]["stem"] if i > 0 else None
            next_u = utts[i + 1]["stem"] if i + 1 < len(utts) else None
            (out / "utts" / f"{u['stem']}.html").write_text(page.render(u=u, prev=prev_u, next=next_u, **common), encoding="utf-8")
        top_conf = [{"op": op, "ref": a, "hyp": b, "count": c} for (op, a, b), c in confusions.most_common(15)]
        best = max((k for k in present if aucs.get(k) is not None), key=lambda k: aucs[k], default=None)
        index = env.get_template("index.html.j2").render(
            utts=utts, corpus=corpus, classes=dict(classes), confusions=top_conf, aucs=aucs, best=best, baselines=baselines, figures=figures,
            worst=worst, n_wrong=sum(wrong), **common)
        (out / "index.html").write_text(index, encoding="utf-8")
        payload = {
            "decode_dir": str(d), "corpus": corpus, "error_classes": dict(classes), "auc_wrong_vs_correct": aucs, "best_diagnostic": best,
            "auc_confidence": baselines,
            "utterances": [{k: v for k, v in u.items() if k not in ("tokens", "steps")} for u in utts],
        }
        (out / "report.json").write_text(json.dumps(payload, indent=1, default=float) + "\n", encoding="utf-8")
        log.info("report of %d utterances in %.1f s (read + features %.1f s, model pass %.1f s, diagnostics + audio %.1f s, "
                 "utterance figures %.1f s, summary + pages %.1f s) -> %s", len(utts), time.perf_counter() - t0, t_feats - t0,
                 t_model - t_feats, t_pages - t_model, t_figs - t_pages, time.perf_counter() - t_figs, out / "index.html")
        return out / "index.html"
    finally:
        owner.__exit__(None, None, None)

