"""The attention encoder-decoder (pure PyTorch; Lightning only wraps it)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.features.fbank import GlobalCMVN
from asr.models.attention import build_attention
from asr.models.decoders.rnn import RNNAttentionDecoder
from asr.models.decoders.transformer import TransformerDecoder
from asr.models.encoders.conformer import ConformerEncoder
from asr.models.encoders.pblstm import PyramidalBLSTMEncoder, make_pad_mask
from asr.models.encoders.transformer import TransformerEncoder

#: Encoder and decoder families by config name. A name registry, not Hydra ``_target_`` paths, so that a
#: model config read back from a checkpoint can only ever build these classes.
ENCODERS = {"pblstm": PyramidalBLSTMEncoder, "transformer": TransformerEncoder, "conformer": ConformerEncoder}
DECODERS = {"rnn": RNNAttentionDecoder, "transformer": TransformerDecoder}


#: The encoder compute dtypes by name (:meth:`AttentionASRModel.set_encoder_dtype`; None = the parameters' float32),
#: the names ``asr-decode encoder_dtype=``, ``asr-transcribe --encoder-dtype`` and the Python API take.
ENCODER_DTYPES: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}


class AttentionASRModel(nn.Module):
    """CMVN → encoder → attention decoder, trained with label-smoothed cross-entropy under teacher forcing.

    Parameters
    ----------
    cmvn : GlobalCMVN
    encoder : nn.Module
        ``forward(xs (B, T, F), xs_lens) -> (hs (B, S, D), hs_lens)`` with attribute ``subsampling_factor``.
    decoder : RNNAttentionDecoder or TransformerDecoder
        Any decoder with the interface of `asr.decoding.search` (``vocab_size``, ``memory``, ``init_state``,
        ``step``, teacher-forced ``forward(hs, hs_lens, ys_in) -> (logits, weights)``).
    sos_id, eos_id, pad_id : int
        Special ids from the tokenizer.
    label_smoothing : float
        Probability mass spread uniformly over the vocabulary (Szegedy et al. 2016).
    ctc_weight : float
        λ of the multi-task loss ``L = λ·CTC + (1 − λ)·attention`` (Kim, Hori & Watanabe 2017,
        arXiv 1609.06773); 0 = pure attention (no CTC layer is built). The CTC branch is a linear layer on
        the encoder output; its blank is the tokenizer's ``pad_id`` (padding is never a target, so the id
        is free). It shapes the encoder towards monotonic alignments; decoding uses the attention decoder.
    guided_attention : float
        Weight of the guided-attention loss added in training (:func:`guided_attention_loss`, a diagonal
        prior on the teacher-forced attention weights; Tachibana et al. 2018). 0 = off.
    guided_attention_sigma : float
        Its width ``g`` (fraction of the utterance; > 0).
    guided_attention_epochs : int
        Apply it in the first N training epochs only (0 = every epoch): the training module switches
        :attr:`guided_attention_active` at each epoch start.
    """

    def __init__(
        self,
        cmvn: GlobalCMVN,
        encoder: nn.Module,
        decoder: RNNAttentionDecoder | TransformerDecoder,
        sos_id: int,
        eos_id: int,
        pad_id: int,
        label_smoothing: float = 0.1,
        ctc_weight: float = 0.0,
        guided_attention: float = 0.0,
        guided_attention_sigma: float = 0.3,
        guided_attention_epochs: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= ctc_weight < 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1), got {ctc_weight}")
        if not guided_attention >= 0.0 or not guided_attention_sigma > 0.0 or guided_attention_epochs < 0:
            raise ValueError(
                f"guided attention needs weight >= 0, sigma > 0 and epochs >= 0, got {guided_attention}, "
                f"{guided_attention_sigma}, {guided_attention_epochs}"
            )
        self.guided_attention, self.guided_attention_sigma = float(guided_attention), float(guided_attention_sigma)
        self.guided_attention_epochs = int(guided_attention_epochs)
        #: Whether the guided-attention term is on (training only; set per epoch by the training module).
        self.guided_attention_active = True
        self.cmvn, self.encoder, self.decoder = cmvn, encoder, decoder
        self.sos_id, self.eos_id, self.pad_id = sos_id, eos_id, pad_id
        self.label_smoothing = label_smoothing
        self.ctc_weight = ctc_weight
        #: Compute dtype of the encoder at inference (:meth:`set_encoder_dtype`); None: the parameters' dtype.
        self.encoder_dtype: torch.dtype | None = None
        self.ctc = nn.Linear(encoder.output_dim, decoder.vocab_size) if ctc_weight > 0 else None

    @property
    def subsampling_factor(self) -> int:
        """Input fbank frames per encoder frame (8 for the default pBLSTM)."""
        return self.encoder.subsampling_factor

    def set_encoder_dtype(self, dtype: torch.dtype | str | None) -> None:
        """Run the encoder in ``dtype`` at inference (``torch.bfloat16`` or ``"bfloat16"``; None / float32: as stored).

        Only the encoder: CMVN, the CTC layer, the decoder and every search score stay float32, and the encoder
        output is given back as float32. The encoder runs under ``torch.autocast`` (the Transformer and Conformer
        matmuls in bf16); the pBLSTM takes its dense oneDNN/cuDNN path in bf16
        (:meth:`PyramidalBLSTMEncoder.forward`), 2.4-2.8x faster than float32 on a CPU with AMX
        (``scripts/bench_decode.py --encoder_dtypes float32,bfloat16``). Training (``self.training``) always computes in float32.

        Raises
        ------
        ValueError
            A dtype other than float32 and bfloat16.
        """
        if isinstance(dtype, str):
            dtype = ENCODER_DTYPES.get(dtype, dtype)  # type: ignore[assignment]
        if dtype == torch.float32:
            dtype = None
        if dtype not in (None, torch.bfloat16):
            raise ValueError(f"encoder dtype must be float32 or bfloat16, got {dtype!r}")
        self.encoder_dtype = dtype

    def encode(self, xs_pad: Tensor, xs_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Normalise and encode: ``(B, T, F), (B,) -> (B, S, D) float32, (B,)`` (in :attr:`encoder_dtype` at inference)."""
        xs = self.cmvn(xs_pad)
        if self.encoder_dtype is None or self.training:
            return self.encoder(xs, xs_lens)
        with torch.autocast(xs.device.type, dtype=self.encoder_dtype):
            hs, hs_lens = self.encoder(xs, xs_lens)
        return hs.float(), hs_lens

    def add_sos_eos(self, ys_pad: Tensor, ys_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder input ``[sos, y_1..y_U]`` and target ``[y_1..y_U, eos]``, both ``(B, U+1)``; pad = ``pad_id``."""
        b, u = ys_pad.shape
        mask = make_pad_mask(ys_lens, u)
        ys = ys_pad.masked_fill(~mask, self.pad_id)
        ys_in = torch.cat([ys.new_full((b, 1), self.sos_id), ys], 1)
        ys_out = torch.cat([ys, ys.new_full((b, 1), self.pad_id)], 1)
        ys_out[torch.arange(b, device=ys.device), ys_lens] = self.eos_id
        return ys_in, ys_out

    def forward(self, xs_pad: Tensor, xs_lens: Tensor, ys_pad: Tensor, ys_lens: Tensor) -> dict[str, Tensor]:
        """Teacher-forced loss.

        Parameters
        ----------
        xs_pad : ``(B, T, F)`` fbank; xs_lens : ``(B,)`` frames
        ys_pad : ``(B, U)`` token ids; ys_lens : ``(B,)`` tokens (without sos/eos)

        Returns
        -------
        dict
            ``loss`` (the training objective), ``att_loss`` (label-smoothed CE averaged over target tokens
            incl. eos), ``ctc_loss`` (CTC summed over the batch / number of target tokens; 0 without CTC),
            ``ga_loss`` (guided-attention loss, computed in training when it is on, else 0; added to ``loss``
            with its weight), ``nll`` (CE without smoothing), ``acc`` (token accuracy), ``n_tokens``,
            ``weights`` ``(B, U+1, S)``.
        """
        hs, hs_lens = self.encode(xs_pad, xs_lens)
        ys_in, ys_out = self.add_sos_eos(ys_pad, ys_lens)
        logits, weights = self.decoder(hs, hs_lens, ys_in)
        valid = ys_out != self.pad_id
        flat_logits, flat_target = logits[valid], ys_out[valid]
        att_loss = F.cross_entropy(flat_logits, flat_target, label_smoothing=self.label_smoothing)
        loss, ctc_loss = att_loss, att_loss.new_zeros(())
        if self.ctc is not None:
            log_probs = torch.log_softmax(self.ctc(hs).float(), -1).transpose(0, 1)  # (S, B, V)
            ctc_loss = F.ctc_loss(log_probs, ys_pad, hs_lens, ys_lens, blank=self.pad_id, reduction="sum", zero_infinity=True) / ys_lens.sum().clamp_min(1)
            loss = self.ctc_weight * ctc_loss + (1 - self.ctc_weight) * att_loss
        ga_loss = att_loss.new_zeros(())
        if self.training and self.guided_attention > 0 and self.guided_attention_active:
            ga_loss = guided_attention_loss(weights, ys_lens + 1, hs_lens, self.guided_attention_sigma)
            loss = loss + self.guided_attention * ga_loss
        with torch.no_grad():
            nll = F.cross_entropy(flat_logits, flat_target)
            acc = (flat_logits.argmax(-1) == flat_target).float().mean()
        return {"loss": loss, "att_loss": att_loss, "ctc_loss": ctc_loss, "ga_loss": ga_loss, "nll": nll, "acc": acc, "n_tokens": valid.sum(), "weights": weights, "hs_lens": hs_lens}


def guided_attention_loss(weights: Tensor, out_lens: Tensor, in_lens: Tensor, sigma: float = 0.3) -> Tensor:
    """Guided-attention loss: the expected distance of the attention from the diagonal, per output step.

    Tachibana, Uenoyama & Aihara 2018 ("Efficiently trainable text-to-speech system based on deep convolutional
    networks with guided attention", arXiv 1710.08969, §4.1) penalise attention on frame ``s`` at output step
    ``u`` by ``W(u, s) = 1 - exp(-(u / U - s / S)^2 / (2 g^2))``: an alignment near the diagonal costs nothing,
    so the decoder learns the (roughly linear) path sooner. ESPnet uses it for TTS (``GuidedAttentionLoss``);
    here it is an option for ASR, where the path is also monotonic but leading/trailing silence shifts it
    (hence a wide default ``g = 0.3`` and the option to use it for the first epochs only). Positions are frame
    and step centres, ``(u + 0.5) / U_b`` and ``(s + 0.5) / S_b``, with each utterance's own lengths.

    Parameters
    ----------
    weights : Tensor
        ``(B, U, S)`` teacher-forced attention weights (rows sum to 1 over valid frames, 0 on padding).
    out_lens : Tensor
        ``(B,)`` valid output steps (tokens + eos).
    in_lens : Tensor
        ``(B,)`` valid encoder frames.
    sigma : float
        ``g``, as a fraction of the utterance.

    Returns
    -------
    Tensor
        Scalar: ``sum_s W(u, s) alpha_u(s)`` averaged over the valid output steps of the batch (in [0, 1]).
    """
    b, u, s = weights.shape
    pos_u = (torch.arange(u, device=weights.device, dtype=weights.dtype)[None, :] + 0.5) / out_lens[:, None].to(weights.dtype)
    pos_s = (torch.arange(s, device=weights.device, dtype=weights.dtype)[None, :] + 0.5) / in_lens[:, None].to(weights.dtype)
    penalty = 1.0 - torch.exp(-(pos_u[:, :, None] - pos_s[:, None, :]).pow(2) / (2.0 * sigma * sigma))  # (B, U, S)
    valid = torch.arange(u, device=weights.device)[None, :] < out_lens[:, None]
    per_step = (penalty * weights).sum(-1)
    return per_step[valid].mean()


def reject_target_keys(cfg: Any, path: str = "model", where: str = "config") -> None:
    """Refuse any Hydra ``_target_`` key anywhere in ``cfg`` (nested mappings and lists included).

    Models are built from the type-name registries only; a ``_target_`` (e.g. ``os.system``) in a config
    read back from a checkpoint is refused, never instantiated.

    Raises
    ------
    ValueError
        Naming the key path, e.g. ``model.encoder._target_``.
    """
    if isinstance(cfg, Mapping):
        for k, v in cfg.items():
            if k == "_target_":
                raise ValueError(f"refusing {where}: '{path}._target_' ({v!r}) is not allowed; model parts are chosen by 'type' from the registries")
            reject_target_keys(v, f"{path}.{k}", where)
    elif isinstance(cfg, (list, tuple)):
        for i, v in enumerate(cfg):
            reject_target_keys(v, f"{path}[{i}]", where)


def xavier_init_(module: nn.Module) -> None:
    """ESPnet's ``init: xavier_uniform``: every weight matrix and convolution kernel (``dim > 1``) drawn from
    Glorot & Bengio (2010)'s uniform distribution, biases set to 0, embeddings ``N(0, 1)`` then scaled like
    the Transformer decoder's own init (``d^-0.5``), LayerNorm left at (1, 0). In place.

    Why: PyTorch's default Linear init (Kaiming uniform, ``a = sqrt(5)``: bound ``1/sqrt(fan_in)``) is up to sqrt(3) ~ 1.7x narrower;
    ESPnet's AN4 Transformer (7.6 % test WER) trains from Xavier.
    """
    for name, m in module.named_modules():
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=m.embedding_dim**-0.5)
        elif isinstance(m, nn.LayerNorm):
            continue
        else:
            for pname, p in m.named_parameters(recurse=False):
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
                elif pname.startswith("bias"):
                    nn.init.zeros_(p)


def decoder_uses_attention(decoder: str | type | nn.Module) -> bool:
    """Whether a decoder takes an attention scorer built from the config's ``model.attention`` group.

    ``decoder`` is a key of ``DECODERS`` (``"rnn"``), a decoder class, or an instance. The RNN decoder takes a
    scorer (``location``, ``additive``, ...); the Transformer decoder has its own multi-head cross-attention
    (class attribute ``needs_attention = False``) and ignores that group. Every decoder declares the attribute
    (:class:`asr.models.interfaces.Decoder`). Raises ``ValueError`` for an unknown type name and ``TypeError`` for a
    class that does not declare it.
    """
    if isinstance(decoder, str):
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder type {decoder!r}; choose one of {sorted(DECODERS)}")
        decoder = DECODERS[decoder]
    cls = decoder if isinstance(decoder, type) else type(decoder)
    if not isinstance(getattr(cls, "needs_attention", None), bool):
        raise TypeError(f"decoder {cls.__name__} does not declare needs_attention (True or False; asr.models.interfaces.Decoder)")
    return cls.needs_attention


def build_model(
    cfg: Mapping[str, Any],
    vocab_size: int,
    sos_id: int,
    eos_id: int,
    pad_id: int,
    feat_dim: int = 80,
    cmvn: GlobalCMVN | None = None,
) -> AttentionASRModel:
    """Build a model from a plain config mapping (the ``model`` group of the Hydra config) or its typed form
    (:class:`asr.models.config.ModelConfig`, which the mapping is turned into first).

    ``cfg`` has ``encoder`` (``type`` + constructor arguments), ``attention`` (``type`` + arguments; used
    only by decoders that take a scorer, i.e. ``rnn``), ``decoder`` (``type`` + arguments),
    ``label_smoothing``, ``ctc_weight`` and optionally ``guided_attention`` (``weight``, ``sigma``, ``epochs``). Types: the keys of ``ENCODERS``, ``DECODERS`` and
    ``asr.models.attention.ATTENTION_TYPES``.

    Raises
    ------
    ValueError
        Unknown encoder/decoder/attention type, an unknown key in a group, or a ``_target_`` key anywhere in
        ``cfg`` (the message names the key path).
    """
    from asr.models.config import ModelConfig

    if not isinstance(cfg, ModelConfig):
        reject_target_keys(cfg, "model")
        cfg = ModelConfig.from_dict(cfg)  # typed: an unknown type, key or init fails here, named
    encoder = ENCODERS[cfg.encoder.type](input_dim=feat_dim, **cfg.kwargs("encoder"))
    dec_kwargs = cfg.kwargs("decoder")
    if decoder_uses_attention(cfg.decoder.type):
        # the RNN decoder takes a scorer from the attention group; the Transformer decoder has its own
        # multi-head attention and ignores that group
        dec_kwargs["attention"] = build_attention(cfg.attention.type, query_dim=cfg.decoder.hidden_size, key_dim=encoder.output_dim, **cfg.kwargs("attention"))
    decoder = DECODERS[cfg.decoder.type](vocab_size=vocab_size, enc_dim=encoder.output_dim, **dec_kwargs)
    if cfg.init == "xavier_uniform":
        xavier_init_(encoder)
        xavier_init_(decoder)
    ga = cfg.guided_attention
    return AttentionASRModel(
        cmvn if cmvn is not None else GlobalCMVN.identity(feat_dim),
        encoder,
        decoder,
        sos_id=sos_id,
        eos_id=eos_id,
        pad_id=pad_id,
        label_smoothing=cfg.label_smoothing,
        ctc_weight=cfg.ctc_weight,
        guided_attention=ga.weight,
        guided_attention_sigma=ga.sigma,
        guided_attention_epochs=ga.epochs,
    )
