"""Conformer encoder for speech (Gulati et al. 2020, "Conformer: Convolution-augmented Transformer for Speech
Recognition", arXiv 2005.08100), as ESPnet's ``ConformerEncoder`` (``macaron_style: true``,
``pos_enc_layer_type: rel_pos``, ``selfattention_layer_type: rel_selfattn``, ``rel_pos_type: latest``,
``activation_type: swish``, ``normalize_before: true``).

Front end: the Transformer encoder's :class:`~asr.models.encoders.transformer.Conv2dSubsampling` (x4). Each block
(Gulati et al. 2020, figure 1 and eq. 1)::

    x = x + 1/2 Dropout(FFN(LN(x)))                 macaron half-step feed-forward (Swish)
    x = x + Dropout(RelMHSA(LN(x), pos_emb))        relative-position self-attention (Dai et al. 2019)
    x = x + Dropout(Conv(LN(x)))                    pointwise conv, GLU, depthwise conv, BatchNorm, Swish, pointwise conv
    x = x + 1/2 Dropout(FFN(LN(x)))
    y = LN(x)

and a last LayerNorm after the blocks (ESPnet's ``after_norm``). The relative-position attention is the shared
:class:`asr.models.layers.MultiHeadAttention` built with ``rel_pos=True`` (:meth:`~asr.models.layers.MultiHeadAttention.attend_rel`).

Padding never reaches a valid frame: attention masks padded keys, and the convolution module zeroes padded frames
before its depthwise convolution (so the convolution sees zeros past the end, as its own zero padding of a lone
utterance) and computes its BatchNorm statistics over valid frames only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.models.encoders.transformer import Conv2dFrontEnd, Conv2dSubsampling
from asr.models.layers import MultiHeadAttention, PositionwiseFeedForward, make_pad_mask, sinusoidal_positions

__all__ = ["relative_positions", "ConvolutionModule", "ConformerEncoderLayer", "ConformerEncoder"]


def relative_positions(length: int, d_model: int, device=None, dtype=torch.float32) -> Tensor:
    """Sinusoidal codes of the relative positions ``length-1, length-2, ..., -(length-1)`` (Dai et al. 2019, 3.3;
    ESPnet's ``RelPositionalEncoding``, ``rel_pos_type: latest``): row ``c`` encodes relative position
    ``length - 1 - c`` with the sinusoids of Vaswani et al. 2017 (3.5).

    Returns
    -------
    Tensor
        ``(1, 2 length - 1, d_model)``.

    Examples
    --------
    >>> relative_positions(3, 4).shape
    torch.Size([1, 5, 4])
    """
    return sinusoidal_positions(2 * length - 1, d_model, offset=-(length - 1), device=device, dtype=dtype).flip(0)[None]


class ConvolutionModule(nn.Module):
    """The Conformer convolution module (Gulati et al. 2020, 2.2, figure 2; ESPnet's ``ConvolutionModule``).

    ``Pointwise Conv1d (D -> 2D) -> GLU -> depthwise Conv1d (kernel K, 'same') -> norm -> Swish -> Pointwise Conv1d``.

    Parameters
    ----------
    channels : int
        D.
    kernel_size : int
        Depthwise kernel K (odd; 31 in ESPnet and the paper's ~32, 15 for short utterances).
    norm : str
        ``batch_norm`` (the paper's and ESPnet's; statistics over valid frames only, see below) or ``layer_norm``
        (per frame over channels: independent of the batch, the same in training and evaluation).

    Why BatchNorm by default: it is what the paper and ESPnet use and what their results (and checkpoints) were
    obtained with. A plain ``BatchNorm1d`` over a padded ``(B, D, S)`` batch would count padded frames in its
    training statistics, so a batch's padding would change the normalisation of its valid frames (and the
    running statistics used in evaluation); here the valid frames are gathered to ``(N, D)`` and normalised by
    the same ``nn.BatchNorm1d`` module (same parameters and buffers), so that only real frames count.

    Shapes
    ------
    ``forward(x (B, S, D), valid (B, S) bool) -> (B, S, D)``; padded output frames are the pointwise conv's
    bias (never read by a valid frame downstream).
    """

    def __init__(self, channels: int, kernel_size: int = 31, norm: str = "batch_norm") -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel must be odd for a 'same' depthwise convolution, got {kernel_size}")
        if norm not in ("batch_norm", "layer_norm"):
            raise ValueError(f"unknown conv_norm {norm!r}; choose batch_norm or layer_norm")
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, 1)
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2, groups=channels)
        self.norm_type = norm
        self.norm = nn.BatchNorm1d(channels) if norm == "batch_norm" else nn.LayerNorm(channels)
        self.pointwise_conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """``x (B, S, D)``, ``valid (B, S)`` bool True on real frames -> ``(B, S, D)``."""
        # pointwise convolutions as matrix products on (B, S, D) (same parameters as Conv1d(kernel 1), fewer copies)
        x = F.glu(F.linear(x, self.pointwise_conv1.weight[..., 0], self.pointwise_conv1.bias), dim=-1)  # (B, S, D)
        x = x.masked_fill(~valid[..., None], 0.0)  # the depthwise conv must not see padding
        x = self.depthwise_conv(x.transpose(1, 2)).transpose(1, 2)  # (B, S, D)
        if self.norm_type == "batch_norm":
            y = x.new_zeros(x.shape)
            y[valid] = self.norm(x[valid])  # (N, D): statistics of valid frames only
            x = y
        else:
            x = self.norm(x)
        return F.linear(F.silu(x), self.pointwise_conv2.weight[..., 0], self.pointwise_conv2.bias)


class ConformerEncoderLayer(nn.Module):
    """One Conformer block (Gulati et al. 2020, eq. 1; ESPnet's ``EncoderLayer`` with ``macaron_style``,
    ``normalize_before``): half-step FFN, relative-position MHSA, convolution module, half-step FFN, LayerNorm.

    Shapes
    ------
    ``forward(x (B, S, D), pos_emb (1, 2S-1, D), valid (B, S) bool) -> (B, S, D)``.
    """

    def __init__(self, d_model: int, num_heads: int, ff_dim: int, dropout: float, conv_kernel: int, conv_norm: str) -> None:
        super().__init__()
        self.norm_ff_macaron, self.norm_mha, self.norm_conv, self.norm_ff, self.norm_final = (nn.LayerNorm(d_model) for _ in range(5))
        self.ff_macaron = PositionwiseFeedForward(d_model, ff_dim, dropout, activation="swish")
        self.self_att = MultiHeadAttention(d_model, num_heads, dropout, rel_pos=True)
        self.conv = ConvolutionModule(d_model, conv_kernel, conv_norm)
        self.ff = PositionwiseFeedForward(d_model, ff_dim, dropout, activation="swish")
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos_emb: Tensor, valid: Tensor) -> Tensor:
        """See the class docstring."""
        x = x + 0.5 * self.dropout(self.ff_macaron(self.norm_ff_macaron(x)))
        y = self.norm_mha(x)
        k, v = self.self_att.project_kv(y)
        x = x + self.dropout(self.self_att.attend_rel(y, k, v, pos_emb, valid[:, None, None, :])[0])
        x = x + self.dropout(self.conv(self.norm_conv(x), valid))
        x = x + 0.5 * self.dropout(self.ff(self.norm_ff(x)))
        return self.norm_final(x)


class ConformerEncoder(Conv2dFrontEnd, nn.Module):
    """Conv2d subsampling (x4) + relative sinusoidal positions + ``num_layers`` Conformer blocks + LayerNorm
    (Gulati et al. 2020, arXiv 2005.08100; ESPnet's ``ConformerEncoder``).

    Positions: the subsampled features are scaled by ``sqrt(d_model)`` (no absolute code is added); every block's
    self-attention reads the relative codes of :func:`relative_positions` through its own ``W_R`` and biases
    ``u``, ``v`` (Transformer-XL, Dai et al. 2019). Valid outputs do not depend on batch padding; padded output
    frames are set to 0.

    Parameters
    ----------
    input_dim : int
        Features per frame F (80 fbank).
    d_model : int
        Model (and output) size D (ESPnet librispeech_100: 256).
    num_heads : int
    ff_dim : int
        Inner size of each of the two feed-forward modules (Swish).
    num_layers : int
        Conformer blocks.
    dropout : float
        On the scaled input and the relative codes, the attention weights, every residual branch and the FF hidden layer.
    conv_kernel : int
        Depthwise convolution kernel (odd; ESPnet's ``cnn_module_kernel``, 31).
    conv_norm : str
        Normalisation in the convolution module: ``batch_norm`` (paper, ESPnet; valid-frame statistics) or
        ``layer_norm`` (see :class:`ConvolutionModule`).
    conv_channels : int, optional
        Channels of the subsampling convolutions (default ``d_model``).

    Shapes
    ------
    ``forward(xs_pad (B, T, F), xs_lens (B,)) -> (hs (B, S, D), hs_lens (B,))``, ``S = ((T - 1) // 2 - 1) // 2``.

    Examples
    --------
    >>> enc = ConformerEncoder(80, d_model=32, num_heads=2, ff_dim=64, num_layers=1, conv_kernel=5).eval()
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
        num_layers: int = 12,
        dropout: float = 0.1,
        conv_kernel: int = 31,
        conv_norm: str = "batch_norm",
        conv_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.d_model = self.output_dim = d_model
        self.subsampling = Conv2dSubsampling(input_dim, d_model, conv_channels)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(ConformerEncoderLayer(d_model, num_heads, ff_dim, dropout, conv_kernel, conv_norm) for _ in range(num_layers))
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
        x = self.dropout(x * math.sqrt(self.d_model))
        pos_emb = self.dropout(relative_positions(s, self.d_model, device=x.device, dtype=x.dtype))
        valid = make_pad_mask(hs_lens, s)  # (B, S)
        for layer in self.layers:
            x = layer(x, pos_emb, valid)
        return self.norm(x).masked_fill(~valid[..., None], 0.0), hs_lens
