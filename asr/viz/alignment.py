"""Attention alignment plots (decoder step x encoder time heat maps).

Rows are decoder output steps (one per emitted token, the last usually ``<eos>``), columns are
encoder frames. The x axis is in seconds: encoder frame ``s`` covers
``[s, s + 1) * frame_shift_s * subsampling`` (e.g. 10 ms fbank shift x pyramid subsampling 8 = 80 ms
per encoder frame), so the image spans ``0 .. S * frame_shift_s * subsampling`` seconds.

Figures are built with matplotlib's object-oriented API (``matplotlib.figure.Figure``) without
pyplot, so nothing touches the global backend or pyplot's figure registry: PNGs are rendered by the
``Agg`` canvas on ``savefig``, works on headless machines, and figures need no ``plt.close``
(they are freed when unreferenced). This also leaves an interactive session's backend alone.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.axes
import matplotlib.image
import matplotlib.transforms
import numpy as np
from matplotlib.figure import Figure

__all__ = ["alignment_figure", "plot_alignment", "plot_comparison", "head_grid_figure", "plot_head_grid", "utterance_title"]

CMAP = "viridis"
DPI = 120
_WRAP = 110  # characters per title line


def utterance_title(utt_id: str, ref: str, hyp: str, wer: float | None) -> str:
    """Standard title for one utterance: ``"<id>  WER <x>%\\nREF: ...\\nHYP: ..."``.

    Parameters
    ----------
    wer : float or None
        Utterance WER in percent; ``None`` prints ``n/a`` (e.g. empty reference).
    """
    w = "n/a" if wer is None else f"{wer:.1f}%"
    return f"{utt_id}  WER {w}\nREF: {ref}\nHYP: {hyp}"


def _wrap(title: str, width: int = _WRAP) -> str:
    """Wrap each line of ``title`` to ``width`` characters (continuation lines indented)."""
    out = []
    for line in title.split("\n"):
        out.append(textwrap.fill(line, width=width, subsequent_indent="     ") if line else "")
    return "\n".join(out)


def _check(weights: np.ndarray, tokens: Sequence[str]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"attention weights must be 2-D (U, S), got shape {w.shape}")
    if w.shape[0] != len(tokens):
        raise ValueError(f"{len(tokens)} token labels for {w.shape[0]} attention rows (shape {w.shape})")
    if w.shape[1] == 0:
        raise ValueError(f"attention weights have no encoder frames (shape {w.shape})")
    return w


def _token_fontsize(n_rows: int) -> float:
    return float(np.clip(360.0 / max(n_rows, 1), 5.0, 10.0))


def _draw(
    ax: matplotlib.axes.Axes,
    w: np.ndarray,
    tokens: Sequence[str],
    seconds_per_frame: float,
    vmax: float | None = None,
    tick_labels: bool = True,
) -> matplotlib.image.AxesImage:
    """Draw ``w`` ``(U, S)`` on ``ax`` (x in seconds, one row per token). With ``tick_labels=False`` the tokens are
    plain text beside the rows instead of y tick labels (a matplotlib Tick costs about five artists: 3x faster
    for figures with many rows, e.g. the pages of ``asr-inspect``)."""
    U, S = w.shape
    im = ax.imshow(
        w,
        aspect="auto",
        origin="upper",
        cmap=CMAP,
        interpolation="nearest",
        extent=(0.0, S * seconds_per_frame, U - 0.5, -0.5),
        vmin=0.0,
        vmax=vmax if vmax is not None else max(float(w.max()), 1e-6),
    )
    if tick_labels:
        ax.set_yticks(np.arange(U))
        ax.set_yticklabels(list(tokens), fontsize=_token_fontsize(U))
    else:
        ax.set_yticks([])
        beside = matplotlib.transforms.blended_transform_factory(ax.transAxes, ax.transData)
        for i, t in enumerate(tokens):
            ax.text(-0.006, i, t, transform=beside, ha="right", va="center", fontsize=_token_fontsize(U))
    ax.set_xlim(0.0, S * seconds_per_frame)
    ax.set_ylabel("output token")
    return im


def window_bounds(weights: np.ndarray, back: int, ahead: int) -> np.ndarray:
    """``(U, 2)`` first and last encoder frame of each step's window in windowed decoding (around the previous
    row's peak, frame 0 for the first row; :func:`asr.models.decoders.rnn.attention_window`) for ``weights (U, S)``."""
    import torch

    from asr.models.decoders.rnn import attention_window

    w = np.asarray(weights)
    peaks = torch.from_numpy(np.concatenate([[0], w.argmax(-1)[:-1]]).astype(np.int64))
    lo, width = attention_window(peaks, back, ahead, w.shape[1])
    lo = lo.numpy()
    return np.stack([lo, lo + width - 1], -1)


def _draw_window(ax: matplotlib.axes.Axes, bounds: np.ndarray, seconds_per_frame: float) -> None:
    """Outline each row's window (``bounds (U, 2)`` frames, inclusive) as a step line on both edges."""
    rows = np.arange(len(bounds) + 1) - 0.5
    for edge, shift in ((bounds[:, 0], 0), (bounds[:, 1], 1)):
        x = (np.append(edge, edge[-1]) + shift) * seconds_per_frame
        ax.step(x, rows, where="post", color="tab:red", linewidth=0.8, alpha=0.9)


def _fig_height(n_rows: int, title: str) -> float:
    return float(np.clip(1.5 + 0.16 * n_rows, 3.0, 18.0)) + 0.2 * (title.count("\n") + 1 if title else 0)


def alignment_figure(
    weights: np.ndarray,
    tokens: Sequence[str],
    frame_shift_s: float = 0.01,
    subsampling: int = 1,
    title: str = "",
    window: tuple[int, int] | None = None,
) -> Figure:
    """Heat map of one attention matrix.

    Parameters
    ----------
    weights : ndarray, shape (U, S)
        Attention weights, row ``u`` = decoder step ``u``, column ``s`` = encoder frame ``s``.
    tokens : list of str, length U
        Label of each row (the emitted tokens, usually ending with ``"<eos>"``).
    frame_shift_s : float
        Input frame shift in seconds (0.01 for 10 ms fbank).
    subsampling : int
        Encoder time reduction factor; one encoder frame lasts ``frame_shift_s * subsampling`` s.
    title : str
        Figure title; long lines are wrapped.
    window : (a, b), optional
        Windowed decoding's ``att_window_back``/``att_window_ahead`` (encoder frames): each row's window is
        outlined in red (:func:`window_bounds`).

    Returns
    -------
    matplotlib.figure.Figure
        One axes (the heat map) plus a colorbar; x limits are ``(0, S * frame_shift_s * subsampling)``.
        Not registered with pyplot (no ``plt.close`` needed); ``fig.savefig`` renders with Agg.

    Raises
    ------
    ValueError
        If ``weights`` is not 2-D, has no columns, or ``len(tokens) != U``.
    """
    w = _check(weights, tokens)
    U, _ = w.shape
    fig = Figure(figsize=(10.0, _fig_height(U, title)), layout="constrained")
    ax = fig.subplots()
    im = _draw(ax, w, tokens, frame_shift_s * subsampling)
    if window is not None:
        _draw_window(ax, window_bounds(w, *window), frame_shift_s * subsampling)
        ax.set_xlim(0.0, w.shape[1] * frame_shift_s * subsampling)
        ax.set_ylim(U - 0.5, -0.5)
    ax.set_xlabel("time (s)")
    fig.colorbar(im, ax=ax, label="attention weight", pad=0.01)
    if title:
        ax.set_title(_wrap(title), fontsize=9, loc="left")
    return fig


def _save_png(fig: Figure, out_path: str | Path) -> Path:
    """Write ``fig`` as a PNG (``DPI``) at ``out_path``, creating parent folders; returns the path."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=DPI)
    return out_path


def plot_alignment(
    weights: np.ndarray,
    tokens: Sequence[str],
    out_path: str | Path,
    frame_shift_s: float = 0.01,
    subsampling: int = 1,
    title: str = "",
    window: tuple[int, int] | None = None,
) -> Path:
    """Save `alignment_figure` as a PNG (dpi 120) at ``out_path`` (parents created).

    Returns the path written. Raises ``ValueError`` as `alignment_figure`.
    """
    fig = alignment_figure(weights, tokens, frame_shift_s, subsampling, title, window)
    return _save_png(fig, out_path)


def plot_comparison(
    panels: Sequence[tuple[str, np.ndarray, Sequence[str]]],
    out_path: str | Path,
    frame_shift_s: float = 0.01,
    subsampling: int = 1,
    suptitle: str = "",
    seconds_per_frame: Sequence[float] | None = None,
) -> Path:
    """Stack several attention maps of the same utterance (e.g. one per attention scorer).

    Parameters
    ----------
    panels : list of (label, weights, tokens)
        ``weights`` of shape ``(U_i, S_i)`` with ``len(tokens) == U_i``; ``label`` titles the panel.
    out_path : str or Path
        PNG to write (parents created).
    frame_shift_s, subsampling : float, int
        As in `alignment_figure`; shared by all panels unless ``seconds_per_frame`` is given.
    suptitle : str
        Figure title (wrapped).
    seconds_per_frame : sequence of float, optional
        Seconds per encoder frame of each panel (``frame_shift_s * subsampling`` of its model), for
        models with different encoder frame rates (e.g. a ×4 and a ×8 encoder).

    Returns
    -------
    Path
        ``out_path``. All panels share the time axis in seconds (same x limits,
        ``0 .. max_i S_i * seconds_per_frame_i``) and one colour scale ``0 .. max weight over all panels``
        with one colorbar.

    Raises
    ------
    ValueError
        If ``panels`` is empty, a panel's shapes are inconsistent, or ``seconds_per_frame`` does not have
        one value per panel.
    """
    if not panels:
        raise ValueError("plot_comparison needs at least one panel")
    checked = [(label, _check(w, toks), list(toks)) for label, w, toks in panels]
    spfs = [frame_shift_s * subsampling] * len(checked) if seconds_per_frame is None else [float(x) for x in seconds_per_frame]
    if len(spfs) != len(checked):
        raise ValueError(f"{len(spfs)} seconds_per_frame values for {len(checked)} panels")
    t_max = max(w.shape[1] * spf for (_, w, _), spf in zip(checked, spfs))
    vmax = max(max(float(w.max()) for _, w, _ in checked), 1e-6)
    heights = [float(np.clip(1.0 + 0.14 * w.shape[0], 1.8, 8.0)) for _, w, _ in checked]
    fig_h = sum(heights) + 0.6 + 0.2 * (suptitle.count("\n") + 1 if suptitle else 0)
    fig = Figure(figsize=(10.0, fig_h), layout="constrained")
    axes = fig.subplots(len(checked), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights})
    axes = axes[:, 0]
    im = None
    for ax, (label, w, toks), spf in zip(axes, checked, spfs):
        im = _draw(ax, w, toks, spf, vmax=vmax)
        ax.set_title(_wrap(label), fontsize=9, loc="left")
    for ax in axes:
        ax.set_xlim(0.0, t_max)
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(im, ax=list(axes), label="attention weight", pad=0.01)
    if suptitle:
        fig.suptitle(_wrap(suptitle), fontsize=9, x=0.01, horizontalalignment="left")
    return _save_png(fig, out_path)


def head_grid_figure(
    weights: np.ndarray,
    tokens: Sequence[str],
    frame_shift_s: float = 0.01,
    subsampling: int = 1,
    title: str = "",
) -> Figure:
    """Grid of multi-head cross-attention maps: one row per decoder layer, one column per head, plus a last
    column with the head average of that layer (the map `alignment_figure` shows for the last layer).

    Parameters
    ----------
    weights : ndarray, shape (L, H, U, S)
        Cross-attention weights of L layers x H heads (e.g. ``TransformerDecoder.cross_attention`` of one
        utterance), row ``u`` = decoder step, column ``s`` = encoder frame.
    tokens : list of str, length U
        Row labels (y axis of the first column).
    frame_shift_s, subsampling : float, int
        As in `alignment_figure`: the x axis is time in seconds, ``0 .. S * frame_shift_s * subsampling``.
    title : str
        Figure title (wrapped).

    Returns
    -------
    matplotlib.figure.Figure
        ``L x (H + 1)`` heat maps sharing one time axis and one colour scale (0 .. max weight) with one
        colorbar; panel titles ``"layer l head h"`` / ``"layer l mean"`` (1-based).

    Raises
    ------
    ValueError
        If ``weights`` is not 4-D, has no frames, or ``len(tokens) != U``.
    """
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim != 4:
        raise ValueError(f"head-grid weights must be 4-D (layers, heads, U, S), got shape {w.shape}")
    n_layers, n_heads, _, _ = w.shape
    _check(w[0, 0], tokens)
    spf = frame_shift_s * subsampling
    vmax = max(float(w.max()), 1e-6)
    u = w.shape[2]
    panel_h = float(np.clip(0.8 + 0.12 * u, 1.6, 5.0))
    fig = Figure(figsize=(3.0 * (n_heads + 1) + 1.0, panel_h * n_layers + 0.4 + 0.2 * (title.count("\n") + 1 if title else 0)), layout="constrained")
    axes = fig.subplots(n_layers, n_heads + 1, sharex=True, sharey=True, squeeze=False)
    im = None
    for layer in range(n_layers):
        maps = [w[layer, h] for h in range(n_heads)] + [w[layer].mean(0)]
        for col, m in enumerate(maps):
            ax = axes[layer, col]
            im = _draw(ax, m, tokens, spf, vmax=vmax)
            name = f"head {col + 1}" if col < n_heads else "mean"
            ax.set_title(f"layer {layer + 1} {name}", fontsize=8)
            if col:
                ax.set_ylabel("")
            if layer == n_layers - 1:
                ax.set_xlabel("time (s)")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="attention weight", pad=0.01)
    if title:
        fig.suptitle(_wrap(title), fontsize=9, x=0.01, horizontalalignment="left")
    return fig


def plot_head_grid(
    weights: np.ndarray,
    tokens: Sequence[str],
    out_path: str | Path,
    frame_shift_s: float = 0.01,
    subsampling: int = 1,
    title: str = "",
) -> Path:
    """Save `head_grid_figure` as a PNG (dpi 120) at ``out_path`` (parents created); returns the path.

    Raises ``ValueError`` as `head_grid_figure`.
    """
    fig = head_grid_figure(weights, tokens, frame_shift_s, subsampling, title)
    return _save_png(fig, out_path)
