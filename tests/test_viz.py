"""Attention alignment plots."""

from __future__ import annotations

import numpy as np
import pytest

from asr.viz.alignment import alignment_figure, plot_alignment, plot_comparison

TOKENS = ["▁TH", "E", "▁CAT", "▁SAT", "<eos>"]
U, S = len(TOKENS), 40


def monotonic(u: int = U, s: int = S) -> np.ndarray:
    """(u, s) attention whose peak moves left to right, rows sum to 1."""
    centers = np.linspace(2, s - 3, u)
    x = np.arange(s)[None, :]
    w = np.exp(-0.5 * ((x - centers[:, None]) / 1.5) ** 2)
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def test_plot_alignment_writes_png(tmp_path):
    p = plot_alignment(monotonic(), TOKENS, tmp_path / "a" / "u1.png", 0.01, 8, "u1  WER 0.0%\nREF: X\nHYP: X")
    assert p == tmp_path / "a" / "u1.png"
    data = p.read_bytes()
    assert len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_axes_time_and_token_labels():
    fig = alignment_figure(monotonic(), TOKENS, frame_shift_s=0.01, subsampling=8, title="t")
    ax = fig.axes[0]  # heat map (fig.axes[1] is the colorbar)
    lo, hi = ax.get_xlim()
    assert lo == pytest.approx(0.0)
    assert hi == pytest.approx(S * 0.01 * 8)
    assert [t.get_text() for t in ax.get_yticklabels()] == TOKENS
    assert list(ax.get_yticks()) == list(range(U))
    assert len(fig.axes) == 2  # colorbar present
    # first row at the top (origin upper): image extent runs from U-0.5 (bottom) to -0.5 (top)
    assert ax.images[0].get_extent()[2:] == [U - 0.5, -0.5]


def test_token_row_mismatch_raises(tmp_path):
    with pytest.raises(ValueError, match="4 token labels for 5 attention rows"):
        alignment_figure(monotonic(), TOKENS[:4])
    with pytest.raises(ValueError, match="2-D"):
        plot_alignment(np.zeros(5), TOKENS, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_comparison_shared_time_axis(tmp_path):
    panels = [("dot", monotonic(), TOKENS), ("location", monotonic(4, 30), TOKENS[1:])]
    p = plot_comparison(panels, tmp_path / "cmp.png", 0.01, 8, "u1\nREF: THE CAT SAT")
    assert p.stat().st_size > 1000
    with pytest.raises(ValueError):
        plot_comparison([("dot", monotonic(), TOKENS[:2])], tmp_path / "bad.png")
    with pytest.raises(ValueError):
        plot_comparison([], tmp_path / "bad.png")


def test_plot_comparison_panels_with_other_frame_rates_share_seconds(tmp_path, monkeypatch):
    """A x4 model's panel (40 ms frames) and a x8 one's (80 ms) on one time axis in seconds."""
    import asr.viz.alignment as alignment

    figs = []
    monkeypatch.setattr(alignment, "_save_png", lambda fig, out: figs.append(fig) or out)
    panels = [("x4", monotonic(U, 40), TOKENS), ("x8", monotonic(U, 20), TOKENS)]
    plot_comparison(panels, tmp_path / "cmp.png", suptitle="u1", seconds_per_frame=[0.04, 0.08])
    heat_maps = [ax for ax in figs[0].axes if ax.images and ax.get_ylabel() == "output token"]
    assert [ax.images[0].get_extent()[1] for ax in heat_maps] == [pytest.approx(1.6), pytest.approx(1.6)]
    assert all(ax.get_xlim() == pytest.approx((0.0, 1.6)) for ax in heat_maps)
    with pytest.raises(ValueError, match="1 seconds_per_frame values for 2 panels"):
        plot_comparison(panels, tmp_path / "bad.png", seconds_per_frame=[0.04])
