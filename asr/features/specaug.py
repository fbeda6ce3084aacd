"""SpecAugment (Park et al. 2019, arXiv 1904.08779): frequency and time masks on fbank, training only.

Built from ``torchaudio.transforms.FrequencyMasking`` / ``TimeMasking`` with independent masks per
utterance. Time warping (optional, off by default: Park et al. found it the least useful part) moves a random
point of each utterance's valid frames by up to ``time_warp`` frames, stretching the frames on either side by
linear interpolation (torchaudio has no spectrogram time warp; this follows the paper's description, without
its sparse image warp).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from asr.features.torchaudio_ops import frequency_masking, time_masking


class SpecAugment(nn.Module):
    """Mask ``num_freq_masks`` bands of up to ``freq_mask_width`` bins and ``num_time_masks`` spans of up to
    ``time_mask_width`` frames (each at most ``max_time_ratio`` of the padded length) per utterance.

    Masked values are set to 0, which after global CMVN is the training-set mean. Identity in eval mode.

    Shapes: ``forward(xs (B, T, F)) -> (B, T, F)``.
    """

    def __init__(
        self,
        num_freq_masks: int = 2,
        freq_mask_width: int = 27,
        num_time_masks: int = 2,
        time_mask_width: int = 40,
        max_time_ratio: float = 0.2,
        time_warp: int = 0,
    ) -> None:
        super().__init__()
        self.time_warp = int(time_warp)
        self.freq = nn.ModuleList(frequency_masking(freq_mask_width) for _ in range(num_freq_masks))
        self.time = nn.ModuleList(time_masking(time_mask_width, max_time_ratio) for _ in range(num_time_masks))

    def forward(self, xs: Tensor, xs_lens: Tensor | None = None) -> Tensor:
        """Masked (and, with ``time_warp > 0``, warped) copy of ``xs (B, T, F)`` in training mode; ``xs`` itself
        in eval mode. ``xs_lens (B,)`` valid frames: warping stays inside them (whole padded length if None)."""
        if not self.training:
            return xs
        if self.time_warp > 0:
            xs = self.warp(xs, xs_lens)
        x = xs.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T) as torchaudio expects
        for m in [*self.freq, *self.time]:
            x = m(x)
        return x.squeeze(1).transpose(1, 2)

    def warp(self, xs: Tensor, xs_lens: Tensor | None = None) -> Tensor:
        """Time warp: for each utterance of ``n`` valid frames pick a centre ``c`` in ``[W, n - W)`` and a shift
        ``w`` in ``[-W, W]``; frames ``[0, c)`` are resized to ``c + w`` and ``[c, n)`` to ``n - c - w``
        (linear interpolation), so the length is unchanged. Utterances shorter than ``2W + 1`` frames are
        left alone. ``xs (B, T, F) -> (B, T, F)``."""
        w_max = self.time_warp
        out = xs.clone()
        lens = xs_lens.tolist() if xs_lens is not None else [xs.shape[1]] * xs.shape[0]
        for i, n in enumerate(lens):
            n = int(n)
            if n <= 2 * w_max + 1:
                continue
            c = int(torch.randint(w_max, n - w_max, ()))
            w = int(torch.randint(-w_max + 1, w_max, ()))
            if w == 0:
                continue
            x = xs[i, :n].t()[None]  # (1, F, n)
            left = torch.nn.functional.interpolate(x[..., :c], size=c + w, mode="linear", align_corners=False)
            right = torch.nn.functional.interpolate(x[..., c:], size=n - c - w, mode="linear", align_corners=False)
            out[i, :n] = torch.cat([left, right], -1)[0].t()
        return out
