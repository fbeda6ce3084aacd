"""Transformer encoder for speech (Vaswani et al. 2017, arXiv 1706.03762) with a x4 convolutional front end
(ESPnet's ``Conv2dSubsampling``, Karita et al. 2019, "A comparative study on Transformer vs RNN in speech
applications", arXiv 1909.06317).

The layers it shares with the decoders (`MultiHeadAttention`, `PositionwiseFeedForward`, `sinusoidal_positions`)
live in :mod:`asr.models.layers` and are re-exported here for older imports.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from asr.models.layers import MultiHeadAttention, PositionwiseFeedForward, make_pad_mask, sinusoidal_positions

__all__ = ["sinusoidal_positions", "MultiHeadAttention", "PositionwiseFeedForward", "Conv2dSubsampling", "TransformerEncoder"]


class Conv2dSubsampling(nn.Module):
    """x4 time reduction: two ``Conv2d(kernel 3, stride 2)`` + ReLU over (time, frequency), then a Linear to
    ``d_model`` (ESPnet/WeNet ``Conv2dSubsampling``; Karita et al. 2019).

    No padding, so encoder frame ``s`` sees input frames ``4s .. 4s + 6`` only and valid outputs never
    depend on batch padding. ``S = ((T - 1) // 2 - 1) // 2`` (T = 300 frames -> 74 encoder frames, 40 ms each
    at a 10 ms frame shift).

    Parameters
    ----------
    input_dim : int
        Features per frame F (80 fbank bins; at least 7).
    d_model : int
        Output size.
    channels : int, optional
        Convolution channels (default ``d_model`` as ESPnet). The second convolution costs
        ``channels^2 * 9`` multiply-adds per output cell, the largest cost of a small encoder on CPU.

    Shapes
    ------
    ``forward(xs_pad (B, T, F), xs_lens (B,)) -> (xs (B, S, d_model), lens (B,))``.
    """

    subsampling_factor = 4

    def __init__(self, input_dim: int, d_model: int, channels: int | None = None) -> None:
        super().__init__()
        channels = d_model if channels is None else channels
        f_out = ((input_dim - 1) // 2 - 1) // 2
        if f_out < 1:
            raise ValueError(f"input_dim {input_dim} is too small for two stride-2 3x3 convolutions (need >= 7)")
        self.conv = nn.Sequential(nn.Conv2d(1, channels, 3, 2), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2), nn.ReLU())
        self.out = nn.Linear(channels * f_out, d_model)

    @staticmethod
    def output_lengths(xs_lens: Tensor) -> Tensor:
        """Output frames ``((T - 1) // 2 - 1) // 2`` for ``xs_lens`` input frames, ``(B,)`` int64 (may be <= 0)."""
        return torch.div(torch.div(xs_lens - 1, 2, rounding_mode="floor") - 1, 2, rounding_mode="floor")

    def forward(self, xs_pad: Tensor, xs_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Subsample a padded batch.

        Raises
        ------
        ValueError
            If an utterance has fewer than 7 frames (no output frame), or the padded batch is shorter.
        """
        lens = self.output_lengths(xs_lens.to(torch.int64))
        if (lens < 1).any() or xs_pad.shape[1] < 7:
            bad = (lens < 1).nonzero().flatten().tolist()
            raise ValueError(
                f"utterances at batch positions {bad} have {xs_lens[bad].tolist()} frames (padded batch: "
                f"{xs_pad.shape[1]}); Conv2dSubsampling needs at least 7 frames"
            )
        x = self.conv(xs_pad.unsqueeze(1))  # (B, C, S, F')
        b, c, s, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, s, c * f)), lens


class Conv2dFrontEnd:
    """What an encoder with the x4 :class:`Conv2dSubsampling` front end says about its frame rate (the Transformer
    and the Conformer encoders share it)."""

    @property
    def subsampling_factor(self) -> int:
        """Input frames per encoder frame (4)."""
        return Conv2dSubsampling.subsampling_factor

    def output_lengths(self, xs_lens: Tensor) -> Tensor:
        """Encoder frames ``((T - 1) // 2 - 1) // 2`` for ``xs_lens`` input frames, ``(B,)`` int64."""
        return Conv2dSubsampling.output_lengths(xs_lens.to(torch.int64))


class TransformerEncoderLayer(nn.Module):
    """Pre-LN block: ``x + Dropout(SelfAtt(LN(x)))``, then ``x + Dropout(FF(LN(x)))`` (Xiong et al. 2020,
    arXiv 2002.04745: trains without the delicate warm-up of the post-LN original)."""

    def __init__(self, d_model: int, num_heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_att, self.norm_ff = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.self_att = MultiHeadAttention(d_model, num_heads, dropout)
        self.ff = PositionwiseFeedForward(d_model, ff_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x (B, S, D)``, ``mask (B, 1, 1, S)`` bool True = valid key -> ``(B, S, D)``."""
        y = self.norm_att(x)
        x = x + self.dropout(self.self_att(y, y, mask)[0])
        return x + self.dropout(self.ff(self.norm_ff(x)))


class TransformerEncoder(Conv2dFrontEnd, nn.Module):
    """Conv2d subsampling (x4) + sinusoidal positions + ``num_layers`` pre-LN self-attention blocks + LayerNorm.

    Positions are absolute sinusoids added to the scaled subsampled features (``x * sqrt(d_model) + PE``, as
    ESPnet's ``PositionalEncoding``): no parameters, defined for any length (an utterance longer than any
    seen in training still gets distinct, smoothly varying codes), and the default of ESPnet's Transformer
    ASR encoder (Karita et al. 2019). Self-attention uses a key padding mask, so valid outputs do not depend
    on batch padding; padded output frames are set to 0.

    Parameters
    ----------
    input_dim : int
        Features per frame F (80 fbank).
    d_model : int
        Model (and output) size D.
    num_heads : int
    ff_dim : int
        Feed-forward inner size.
    num_layers : int
    dropout : float
        On the positional-encoded input, the attention weights, the residual branches and the FF hidden layer.
    conv_channels : int, optional
        Channels of the subsampling convolutions (default ``d_model``).

    Shapes
    ------
    ``forward(xs_pad (B, T, F), xs_lens (B,)) -> (hs (B, S, D), hs_lens (B,))``,
    ``S = ((T - 1) // 2 - 1) // 2``; encoder frame ``s`` starts at ``4 s`` input frames (40 ms at 10 ms shift).

    Examples
    --------
    >>> enc = TransformerEncoder(80, d_model=32, num_heads=2, ff_dim=64, num_layers=1).eval()
    >>> hs, hs_lens = enc(torch.randn(2, 100, 80), torch.tensor([100, 60]))
    >>> tuple(hs.shape), hs_lens.tolist()
    ((2, 24, 32), [24, 14])
    """

    def __init__(
        self,
        input_dim: int = 80,
        d_model: int = 256,
        num_heads: int = 4,
        ff_dim: int = 1024,
        num_layers: int = 6,
        dropout: float = 0.1,
        conv_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.d_model = self.output_dim = d_model
        self.subsampling = Conv2dSubsampling(input_dim, d_model, conv_channels)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(TransformerEncoderLayer(d_model, num_heads, ff_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, xs_pad: Tensor, xs_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Encode a padded batch.

        Raises
        ------
        ValueError
            If an utterance is shorter than 7 frames (see `Conv2dSubsampling`).
        """
        x, hs_lens = self.subsampling(xs_pad, xs_lens)
        s = x.shape[1]
        x = self.dropout(x * math.sqrt(self.d_model) + sinusoidal_positions(s, self.d_model, device=x.device, dtype=x.dtype))
        valid = make_pad_mask(hs_lens, s)  # (B, S)
        mask = valid[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x).masked_fill(~valid[..., None], 0.0), hs_lens
