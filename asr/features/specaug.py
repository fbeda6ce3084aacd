"""SpecAugment (Park et al. 2019, arXiv 1904.08779): frequency and time masks on fbank, training only.

Built from ``torchaudio.transforms.FrequencyMasking`` / ``TimeMasking`` with independent masks per
utterance. Time warping is left out (Park et al. found it the least useful part).
"""

from __future__ import annotations

import torch
import torchaudio
from torch import Tensor, nn


class SpecAugment(nn.Module):
    """Mask ``num_freq_masks`` bands of up to ``freq_mask_width`` bins and ``num_time_masks`` spans of up to
    ``time_mask_width`` frames (each at most ``max_time_ratio`` of the padded length) per utterance.

    Masked values are set to 0, which after global CMVN is the training-set mean. Identity in eval mode.

    Shapes: ``forward(xs (B, T, F)) -> (B, T, F)``.
    """

    def __init__(self, num_freq_masks: int = 2, freq_mask_width: int = 27, num_time_masks: int = 2, time_mask_width: int = 40, max_time_ratio: float = 0.2) -> None:
        super().__init__()
        self.freq = nn.ModuleList(torchaudio.transforms.FrequencyMasking(freq_mask_width, iid_masks=True) for _ in range(num_freq_masks))
        self.time = nn.ModuleList(torchaudio.transforms.TimeMasking(time_mask_width, iid_masks=True, p=max_time_ratio) for _ in range(num_time_masks))

    def forward(self, xs: Tensor) -> Tensor:
        """Masked copy of ``xs (B, T, F)`` in training mode; ``xs`` itself in eval mode."""
        if not self.training:
            return xs
        x = xs.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T) as torchaudio expects
        for m in [*self.freq, *self.time]:
            x = m(x)
        return x.squeeze(1).transpose(1, 2)
