"""Greedy and batched beam search for the attention decoder.

Both run on a whole batch of utterances at once; beam search keeps the ``B x K`` hypotheses in one tensor
program (flattened top-k over ``K * V`` candidates per utterance, ``beam = id // V``, ``token = id % V``,
as ESPnet's batch beam search) and reorders the decoder state with ``DecoderState.select``.

With ``ctc_weight`` λ > 0 the beam search is the joint CTC/attention one of Watanabe et al. 2017 ("Hybrid
CTC/attention architecture for end-to-end speech recognition"): a hypothesis ``h`` extended from ``g`` scores
``(1 - λ) log p_att(c | g) + λ (log psi_ctc(h) - log psi_ctc(g))``, the CTC prefix scores of all ``B x K x V``
extensions computed at once (:mod:`asr.decoding.ctc`). λ = 1 with beam 1 is CTC-only greedy decoding.

Ensembles: ``model`` may be a sequence of models sharing the tokenizer (as with fairseq's ``EnsembleModel`` or
ESPnet's several weighted decoder scorers). Each member encodes the batch itself, so members may differ in
architecture and encoder frame rate (e.g. a ×4 and a ×8 pBLSTM), and keeps its own encoder memory, decoder state
and CTC prefix scorer over its own encoder frames; all are reordered with the same hypothesis indices. At every
step the attention log-probabilities are the mean of the members' ``log_softmax`` outputs and the CTC term the mean
of their prefix-score deltas, so a candidate scores ``(1 - λ) mean_m log p_att^m(c | g) + λ mean_m Δ_ctc^m``: a
log-linear combination with equal weights, the same form as the CTC/attention combination itself and as ESPnet's
weighted sum of scorers (fairseq's ensemble averages probabilities instead). Every term is a log-probability or a
prefix-score delta, so scores still only fall as a hypothesis grows and the beam search's stopping bound holds. The
first member gives the length limits (its encoder frames) and the attention weights recorded in
:class:`Hypothesis`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from asr.decoding.ctc import CTCPrefixScorer, CTCPrefixState, ctc_greedy
from asr.models.asr_model import AttentionASRModel
from asr.models.decoders.rnn import AttentionConstraint


#: Largest accepted beam: the search holds ``B x K x V`` candidate scores and (joint CTC) ``T x 2 x K x V``
#: prefix-score tensors per step, so the beam must stay far from "allocate everything".
MAX_BEAM_SIZE = 256


@dataclass(frozen=True)
class DecodingOptions:
    """Search settings; the defaults here are THE decoding defaults of the toolkit (``asr-decode``,
    ``conf/decode.yaml``, ``recipes/an4/run.sh``, ``scripts/results_table.py`` and :mod:`asr.inference` take
    them from this class).

    The defaults are the AN4 recipe's measured setting (recipes/an4/README.md): beam 10; joint CTC/attention
    with λ 0.3 (ESPnet's an4 value; on train_dev within 0.3 CER points of the best λ for the recipe default
    model, and the setting its test WER was reported with); length penalty 0.5 (chosen on train_dev: CER
    37.6 / 33.6 / 38.0 % at 0 / 0.5 / 1.0, location_aware). A model without a CTC branch decodes
    attention-only unless λ is given explicitly (:func:`resolve_options`).

    Attributes
    ----------
    beam_size : int
        K. 1 is a greedy search (:func:`decode_batch`): attention arg-max when ``ctc_weight`` is 0, CTC best path
        when it is 1, and for 0 < λ < 1 the joint CTC/attention search keeping one hypothesis (the arg-max of the
        joint score at every step). A model recorded with a CTC weight (``config.yaml`` ``decoding``) keeps it at
        beam 1; give ``ctc_weight=0`` for attention-only greedy.
    max_len_ratio : float
        Hypotheses stop after ``max(min_len, ceil(max_len_ratio * S))`` tokens, S = encoder frames.
    min_len : int
        Floor of the maximum length above.
    length_penalty : float
        Finished hypotheses are ranked by ``log p / (len + 1) ** length_penalty`` (len counts eos);
        0 ranks by raw log-probability, 1 by per-token average (length normalisation).
    ctc_weight : float
        λ in [0, 1] of joint CTC/attention decoding; 0 = attention only. Needs a model trained with a CTC
        branch when > 0. 1 with ``beam_size`` 1 is CTC greedy (best path) decoding.
    end_detect_m : int
        Beam search end detection (:func:`end_detected`): the number of last steps looked at; 0 disables it.
    end_detect_d : float
        End detection's log-score margin (<= 0).
    att_window_back, att_window_ahead : int
        Windowed (monotonic) decoding: each step attends only to the encoder frames from ``att_window_back``
        before to ``att_window_ahead`` after the previous step's attention peak (:mod:`asr.models.decoders.rnn`);
        -1 and -1 (default) = global attention. RNN attention decoders only.
    att_window_restart : bool
        With a window, in greedy search: an eos before the window reaches the last frame restarts the decoder
        there (a new utterance inside a long recording; :meth:`~asr.models.decoders.rnn.RNNAttentionDecoder.restart`),
        provided a token was emitted since the last (re)start (else eos is blocked, so decoding always advances).
        False, and always in beam search: that eos is blocked until the window reaches the last frame.
    hard_attention : bool
        Argmax (hard) attention context at every step (:func:`asr.models.attention.harden`). RNN attention
        decoders only.
    no_speech_db : float
        No-speech decision of :class:`~asr.decoding.engine.Engine` (:func:`asr.decoding.nospeech.modulation_depth_db`):
        a unit (an input, or a long-form segment) whose low-band energy modulation depth is below this many dB is
        not searched and gets an empty hypothesis (silence, hum, steady noise of any level); 0 = off. Default 6 dB,
        measured with models/an4_pblstm_x4 (:mod:`asr.decoding.nospeech`): digital silence 0, white, brown noise and
        hum 0-2.9 dB at any level; AN4 speech 21.5-56 dB (90 clips), and 12.7 dB at the least in white noise at 0 dB
        SNR. Model-independent (fbank only), so it holds for models without a CTC branch as well.
    lm_weight : float
        β of language-model shallow fusion (Gulcehre et al. 2015; Kannan et al. 2018): every candidate scores
        ``(1 - λ) log p_att + λ Δ log p_ctc + β log p_lm`` (ESPnet's combination), the LM an
        :class:`asr.models.lm.LSTMLM` given to the engine (``lm=``). 0 (default) = no LM. Chosen on dev.
    """

    beam_size: int = 10
    max_len_ratio: float = 1.5
    min_len: int = 5
    length_penalty: float = 0.5
    ctc_weight: float = 0.3
    end_detect_m: int = 3
    end_detect_d: float = -10.0
    att_window_back: int = -1
    att_window_ahead: int = -1
    att_window_restart: bool = True
    hard_attention: bool = False
    no_speech_db: float = 6.0
    lm_weight: float = 0.0

    def __post_init__(self) -> None:
        """Check every option's type and range; numbers given as ``int`` where a float is meant are converted.

        Raises
        ------
        ValueError
            ``beam_size`` not an integer in ``[1, MAX_BEAM_SIZE]``, ``min_len`` not an integer >= 0, a float
            option NaN/infinite/not a number, ``max_len_ratio`` <= 0, ``length_penalty`` < 0, ``ctc_weight``
            outside [0, 1], ``no_speech_db`` < 0; ``end_detect_m`` not an integer >= 0, ``end_detect_d`` not a finite number <= 0;
            only one of ``att_window_back``/``att_window_ahead`` set (>= 0), either below -1;
            ``hard_attention`` not a bool.
        """
        for name, lo in (("beam_size", 1), ("min_len", 0), ("end_detect_m", 0), ("att_window_back", -1), ("att_window_ahead", -1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an integer, got {v!r} ({type(v).__name__})")
            if v < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}")
        if self.beam_size > MAX_BEAM_SIZE:
            raise ValueError(f"beam_size must be <= {MAX_BEAM_SIZE}, got {self.beam_size}")
        for name in ("max_len_ratio", "length_penalty", "ctc_weight", "end_detect_d", "no_speech_db", "lm_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.max_len_ratio <= 0:
            raise ValueError(f"max_len_ratio must be > 0, got {self.max_len_ratio}")
        if self.lm_weight < 0:
            raise ValueError(f"lm_weight must be >= 0 (0 = no language model), got {self.lm_weight}")
        if self.no_speech_db < 0:
            raise ValueError(f"no_speech_db must be >= 0 (0 = off), got {self.no_speech_db}")
        if self.length_penalty < 0:
            raise ValueError(f"length_penalty must be >= 0, got {self.length_penalty}")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.end_detect_d > 0:
            raise ValueError(f"end_detect_d must be <= 0 (a log-probability difference), got {self.end_detect_d}")
        if (self.att_window_back < 0) != (self.att_window_ahead < 0):
            raise ValueError(
                "windowed decoding needs both att_window_back and att_window_ahead (frames >= 0), got "
                f"{self.att_window_back} and {self.att_window_ahead}; -1 and -1 = global attention"
            )
        for name in ("hard_attention", "att_window_restart"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def windowed(self) -> bool:
        """Whether attention is windowed (``att_window_back``/``att_window_ahead`` set)."""
        return self.att_window_back >= 0

    def constraint(self, eos_id: int, greedy: bool = False) -> AttentionConstraint | None:
        """The decoder's :class:`AttentionConstraint` for these options (None when attention is global and soft);
        eos is blocked before the window's end unless ``greedy`` search restarts there (``att_window_restart``)."""
        window = (self.att_window_back, self.att_window_ahead) if self.windowed else None
        block = None if greedy and self.att_window_restart else eos_id
        c = AttentionConstraint(window=window, hard=self.hard_attention, eos_id=block)
        return c if c.active else None


@dataclass(frozen=True)
class Hypothesis:
    """One decoded hypothesis.

    ``tokens``: ids without sos/eos; ``score``: total log-probability including eos;
    ``norm_score``: the ranking score; ``attention``: ``(len(tokens) + 1, S)`` weights (last row = eos step;
    for an ensemble, those of the first member over its ``S`` encoder frames; ``(len(tokens), S)`` for a
    hypothesis that reached the length limit); ``reached_limit``: the search stopped it at its maximum length
    (``max(min_len, ceil(max_len_ratio * S))`` tokens) instead of eos (a runaway, e.g. "AND AND AND ..." on
    out-of-domain audio; :class:`~asr.decoding.engine.Engine` counts them in ``stats["n_length_limit"]``).
    """

    tokens: list[int]
    score: float
    norm_score: float
    attention: Tensor = field(repr=False)
    reached_limit: bool = False


def _max_lens(hs_lens: Tensor, opts: DecodingOptions) -> Tensor:
    return torch.clamp(torch.ceil(hs_lens.float() * opts.max_len_ratio).long(), min=opts.min_len)


def _norm(score: float, n: int, penalty: float) -> float:
    return score / (n ** penalty) if penalty else score


def _mask_special(logp: Tensor, model: AttentionASRModel) -> Tensor:
    """Padding/blank and sos are never outputs: their log-probabilities become -inf (last axis = tokens)."""
    logp[..., model.pad_id] = float("-inf")
    logp[..., model.sos_id] = float("-inf")
    return logp


def ctc_log_probs(model: AttentionASRModel, hs: Tensor) -> Tensor:
    """``(B, S, V)`` CTC log-posteriors of encoder output ``hs (B, S, D)``.

    Raises
    ------
    ValueError
        The model has no CTC branch (trained with ``model.ctc_weight=0``).
    """
    if model.ctc is None:
        raise ValueError("decoding with ctc_weight > 0 needs a model trained with a CTC branch (model.ctc_weight > 0)")
    return torch.log_softmax(model.ctc(hs).float(), -1)


Models = AttentionASRModel | Sequence[AttentionASRModel]
#: An encoder output ``(hs (B, S, D), hs_lens (B,))``.
Encoded = tuple[Tensor, Tensor]


def ensemble_members(model: Models, need_ctc: bool = False) -> list[AttentionASRModel]:
    """The members of ``model`` (one model, or a sequence of them for an ensemble) as a list.

    Raises
    ------
    ValueError
        An empty sequence; members that differ in ``vocab_size`` or the pad/sos/eos ids (they must share the
        tokenizer); ``need_ctc`` and an ensemble member without a CTC branch (a single model is left to
        :func:`ctc_log_probs`, which raises then).
    """
    models = [model] if isinstance(model, AttentionASRModel) else list(model)
    if not models:
        raise ValueError("an ensemble needs at least one model")
    first = models[0]
    for i, m in enumerate(models[1:], 1):
        for name, mine, theirs in (
            ("vocab_size", m.decoder.vocab_size, first.decoder.vocab_size),
            ("pad_id", m.pad_id, first.pad_id),
            ("sos_id", m.sos_id, first.sos_id),
            ("eos_id", m.eos_id, first.eos_id),
        ):
            if mine != theirs:
                raise ValueError(f"ensemble member {i} has {name} {mine}, member 0 has {theirs}: the members must share one tokenizer")
    if need_ctc and len(models) > 1:
        missing = [i for i, m in enumerate(models) if m.ctc is None]
        if missing:
            raise ValueError(f"decoding with ctc_weight > 0 needs every ensemble member to have a CTC branch; member(s) {missing} have none")
    return models


def _mean(xs: list[Tensor]) -> Tensor:
    """Element-wise mean; one tensor comes back as it is (the single-model search is unchanged)."""
    return xs[0] if len(xs) == 1 else torch.stack(xs).mean(0)


@dataclass
class _Member:
    """Search state of one ensemble member (``N`` hypothesis rows: ``B`` in greedy, ``B x K`` in beam search).

    Attributes
    ----------
    model : AttentionASRModel
    memory, state
        Its decoder's encoder memory (rows repeated per hypothesis) and decoder state.
    ctc : CTCPrefixScorer or None
        Its CTC prefix scorer over its own encoder frames, when CTC is scored.
    ctc_state : CTCPrefixState or None
        The prefix state of each hypothesis.
    """

    model: AttentionASRModel
    memory: Any
    state: Any
    ctc: CTCPrefixScorer | None = None
    ctc_state: CTCPrefixState | None = None
    constraint: AttentionConstraint | None = None
    _ctc_ext: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls, model: AttentionASRModel, xs_pad: Tensor, xs_lens: Tensor, beam: int | None = None, use_ctc: bool = False,
        opts: DecodingOptions | None = None, encoded: Encoded | None = None,
    ) -> tuple["_Member", Tensor, Tensor]:
        """Encode ``xs_pad (B, T, F)`` and set up ``B x beam`` hypothesis rows, utterance-major (``beam`` None:
        one row per utterance, memory as it is); also returns ``hs (B, S, D)`` and ``hs_lens (B,)``. ``opts``
        gives the attention constraint (windowed / hard decoding); ``encoded``, this model's ``(hs, hs_lens)`` when
        already computed (the encoder is then not run)."""
        hs, hs_lens = encoded if encoded is not None else model.encode(xs_pad, xs_lens)
        memory = model.decoder.memory(hs, hs_lens)
        if beam is not None:
            memory = memory.select(torch.arange(hs.shape[0], device=hs.device).repeat_interleave(beam))
        constraint = None if opts is None else opts.constraint(model.eos_id, greedy=beam is None)
        member = cls(model, memory, model.decoder.init_state(memory), constraint=constraint)
        if use_ctc:
            member.ctc = CTCPrefixScorer(ctc_log_probs(model, hs), hs_lens, model.pad_id, model.eos_id, beam or 1)
            member.ctc_state = member.ctc.init_state()
        return member, hs, hs_lens

    def step(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Advance every row by its last token ``y (N,)``.

        Returns the attention log-probabilities ``(N, V)``, the attention weights ``(N, S)`` and, when CTC is
        scored, the prefix-score deltas ``log psi(g + c) - log psi(g)`` ``(N, V)`` (else None).
        """
        logits, w, self.state = self.model.decoder.step(y, self.state, self.memory, self.constraint)
        logp = torch.log_softmax(logits.float(), -1)
        if self.ctc is None:
            return logp, w, None
        self._ctc_ext = self.ctc.score(self.ctc_state)
        psi = self._ctc_ext[0]
        return logp, w, torch.nan_to_num(psi - self.ctc_state.psi[:, None], nan=float("-inf"))

    def keep(self, rows: Tensor) -> None:
        """Drop every hypothesis row but ``rows`` (``(N',)`` int64, whole utterances) from memory, decoder
        state and CTC prefix state (utterances whose search is done)."""
        self.memory = self.memory.select(rows)
        self.state = self.state.select(rows)
        if self.ctc is not None:
            self.ctc_state = self.ctc.keep(self.ctc_state, rows)

    def select(self, src: Tensor, tokens: Tensor) -> None:
        """Keep row ``src[i]`` extended by ``tokens[i]`` as row ``i`` (``(N',)`` int64 each)."""
        self.state = self.state.select(src)
        if self.ctc is not None:
            self.ctc_state = self.ctc.select(*self._ctc_ext, src, tokens)


def _start(
    model: Models, xs_pad: Tensor, xs_lens: Tensor, beam: int | None = None, use_ctc: bool = False, opts: DecodingOptions | None = None, encoded: Encoded | None = None
) -> tuple[list[_Member], Tensor, Tensor]:
    """Check the members (:func:`ensemble_members`) and start each (:meth:`_Member.start`); returns the members
    and the FIRST member's ``hs (B, S, D)`` and ``hs_lens (B,)``, which set the length limits and the frames
    of the recorded attention. ``encoded``: the first member's ``(hs, hs_lens)`` when already computed."""
    members = ensemble_members(model, need_ctc=use_ctc)
    started = [_Member.start(m, xs_pad, xs_lens, beam, use_ctc, opts, encoded if i == 0 else None) for i, m in enumerate(members)]
    return [m for m, _, _ in started], started[0][1], started[0][2]


def _ensemble_step(members: list[_Member], y: Tensor, ctc_weight: float) -> tuple[Tensor, Tensor]:
    """One step of every member: the joint log-scores ``(1 - λ) mean att + λ mean Δctc`` ``(N, V)`` (attention
    only when λ is 0 or CTC is not scored) and the first member's attention weights ``(N, S)``."""
    outs = [m.step(y) for m in members]
    logp = _mean([o[0] for o in outs])
    if ctc_weight > 0 and outs[0][2] is not None:
        logp = (1 - ctc_weight) * logp + ctc_weight * _mean([o[2] for o in outs])
    return logp, outs[0][1]


@torch.no_grad()
def ctc_greedy_search(model: Models, xs_pad: Tensor, xs_lens: Tensor, opts: DecodingOptions = DecodingOptions(), encoded: Encoded | None = None) -> list[Hypothesis]:
    """CTC best-path decoding of a batch (no attention decoder).

    ``Hypothesis.attention`` is the CTC alignment as a ``(U + 1, S)`` 0/1 matrix: row ``u`` marks the encoder
    frame where token ``u`` starts, the last row the utterance's final frame.

    ``model`` may be a one-member sequence; best-path decoding has no per-token step at which members with
    different frame rates could be combined, so an ensemble decodes CTC-only with :func:`beam_search`
    (``ctc_weight`` 1; :func:`decode_batch` does so).

    Raises
    ------
    ValueError
        The model has no CTC branch, or ``model`` has more than one member.
    """
    models = ensemble_members(model)
    if len(models) > 1:
        raise ValueError("CTC best-path decoding takes one model; decode an ensemble CTC-only with beam_search(ctc_weight=1)")
    model = models[0]
    hs, hs_lens = encoded if encoded is not None else model.encode(xs_pad, xs_lens)
    logp = ctc_log_probs(model, hs)
    out = []
    for (tokens, score, frames), n in zip(ctc_greedy(logp, hs_lens, model.pad_id), hs_lens.tolist()):
        att = torch.zeros(len(tokens) + 1, n)
        att[torch.arange(len(tokens)), torch.tensor(frames, dtype=torch.long)] = 1.0
        att[-1, n - 1] = 1.0
        out.append(Hypothesis(tokens, score, _norm(score, len(tokens) + 1, opts.length_penalty), att))
    return out


@torch.no_grad()
def greedy_search(model: Models, xs_pad: Tensor, xs_lens: Tensor, opts: DecodingOptions = DecodingOptions(), encoded: Encoded | None = None, lm: Any = None) -> list[Hypothesis]:
    """Arg-max decoding of a batch (of the mean of the members' log-probabilities for an ensemble).

    Parameters
    ----------
    model : AttentionASRModel or a sequence of them (an ensemble, module docstring).
    xs_pad : ``(B, T, F)`` fbank; xs_lens : ``(B,)`` frames.
    encoded : ``(hs (B, S, D), hs_lens (B,))``, optional
        The (first) model's encoder output for ``xs_pad`` when the caller has it already (e.g. for CTC
        timestamps): the search then does not run that encoder again.

    Returns
    -------
    list of Hypothesis, one per utterance, in batch order.

    Raises
    ------
    ValueError
        Ensemble members that do not share the tokenizer's vocabulary and special ids.
    """
    members, hs, hs_lens = _start(model, xs_pad, xs_lens, opts=opts, encoded=encoded)
    first = members[0].model
    b = hs.shape[0]
    max_lens = _max_lens(hs_lens, opts)
    y = hs.new_full((b,), first.sos_id, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool, device=hs.device)
    scores = hs.new_zeros(b)
    toks, atts = [], []
    restarts = opts.windowed and opts.att_window_restart
    since = torch.zeros(b, dtype=torch.long, device=hs.device)  # tokens emitted since the last (re)start
    use_lm = lm is not None and opts.lm_weight > 0
    lm_state = lm.init_state(b, hs.device) if use_lm else None
    for t in range(int(max_lens.max())):
        logp, w = _ensemble_step(members, y, 0.0)
        if use_lm:  # shallow fusion: + beta log p_lm
            lm_logp, lm_state = lm.step(y, lm_state)
            logp = logp + opts.lm_weight * lm_logp
        logp = _mask_special(logp, first)
        if restarts:  # a (re)started utterance emits a token before it may end again: decoding always advances
            logp[:, first.eos_id] = logp[:, first.eos_id].masked_fill(~members[0].state.window_end & (since == 0), float("-inf"))
        best_lp, y = logp.max(-1)
        active = ~done
        scores = scores + best_lp * active
        is_eos = y == first.eos_id
        # windowed decoding: eos before the window reached the last frame = a new utterance starts there
        restart = active & is_eos & ~members[0].state.window_end if restarts else torch.zeros_like(done)
        toks.append(torch.where(active & ~restart, y, torch.full_like(y, -1)))
        atts.append(w)
        done = done | (is_eos & ~restart) | (t + 1 >= max_lens)
        if bool(done.all()):
            break
        since = torch.where(restart, torch.zeros_like(since), since + 1)
        if bool(restart.any()):
            for m in members:
                m.state = m.model.decoder.restart(m.state, restart)
            y = torch.where(restart, torch.full_like(y, first.sos_id), y)
            if use_lm:  # a new utterance starts: the LM forgets the previous one
                keep = (~restart).to(lm_state.h.dtype)[None, :, None]
                lm_state.h, lm_state.c = lm_state.h * keep, lm_state.c * keep
    toks_t, atts_t = torch.stack(toks, 1).cpu(), torch.stack(atts, 1).cpu()
    out = []
    for i in range(b):
        kept = toks_t[i] >= 0  # the steps that emitted a token (restart steps emit none)
        seq = toks_t[i][kept].tolist()
        n = len(seq)  # includes eos if emitted
        ended = bool(seq) and seq[-1] == first.eos_id
        tokens = seq[:-1] if ended else seq
        s = float(scores[i])
        out.append(Hypothesis(tokens, s, _norm(s, n, opts.length_penalty), atts_t[i][kept][:, : int(hs_lens[i])], reached_limit=not ended))
    return out


def end_detected(ended: list[tuple[int, float]], step: int, m: int, d_end: float) -> bool:
    """ESPnet's end detection (``espnet.nets.e2e_asr_common.end_detect``; Watanabe et al. 2017, Sec. V.B).

    Parameters
    ----------
    ended : ``(step, score)`` of every hypothesis of one utterance that ended with eos so far (``step``: the
        search step at which it ended, i.e. its length in tokens including eos minus 1).
    step : the current step.
    m : how many of the last steps are looked at (``M``); 0 never detects an end.
    d_end : log-score margin (``D_end``, negative).

    Returns
    -------
    bool
        True when for each of the steps ``step - m + 1 .. step`` some hypothesis ended and the best of them
        scores below ``best ended score + d_end``: hypotheses ending now are far worse than the best one, so
        longer ones will not beat it (a heuristic: scores only fall as hypotheses grow).
    """
    if m <= 0 or not ended:
        return False
    best = max(sc for _, sc in ended)
    for back in range(m):
        at = [sc for st, sc in ended if st == step - back]
        if not at or max(at) - best >= d_end:
            return False
    return True


@torch.no_grad()
def forced_attention(member: "_Member", rows: Tensor, hyps: list[list[int]], hs_lens: Tensor, with_eos: list[bool]) -> list[Tensor]:
    """Attention weights of given hypotheses, recomputed by running the decoder teacher-forced.

    The beam search keeps only tokens and scores of its hypotheses (attention weights of ``K`` hypotheses
    over every step would take ``K x L x S`` memory, most of it for pruned ones); the weights of the chosen
    hypothesis are recomputed here, one decoder pass over ``[sos] + tokens`` per utterance, batched.

    Parameters
    ----------
    member : the first ensemble member's search state (its encoder memory).
    rows : ``(B,)`` int64 rows of ``member.memory`` holding each utterance's encoder memory.
    hyps : token ids of the hypothesis of each utterance (without sos/eos).
    hs_lens : ``(B,)`` encoder frames per utterance.
    with_eos : whether each hypothesis ended with eos (then its eos step gets a row too).

    Returns
    -------
    list of ``(len(tokens) + 1, S_i)`` (or ``(len(tokens), S_i)`` without eos) float CPU tensors.
    """
    model = member.model
    memory = member.memory.select(rows)
    state = model.decoder.init_state(memory)
    n_steps = max(len(h) + 1 for h in hyps)
    dev = rows.device
    inputs = torch.full((len(hyps), n_steps), model.eos_id, dtype=torch.long, device=dev)
    inputs[:, 0] = model.sos_id
    for i, h in enumerate(hyps):
        if h:
            inputs[i, 1 : len(h) + 1] = torch.tensor(h, dtype=torch.long, device=dev)
    ws = []
    for t in range(n_steps):
        _, w, state = model.decoder.step(inputs[:, t], state, memory, member.constraint)
        ws.append(w.float().cpu())
    att = torch.stack(ws, 1)  # (B, steps, S)
    return [att[i, : len(h) + int(e), : int(hs_lens[i])] for i, (h, e) in enumerate(zip(hyps, with_eos))]


@torch.no_grad()
def beam_search(
    model: Models, xs_pad: Tensor, xs_lens: Tensor, opts: DecodingOptions = DecodingOptions(), use_ctc: bool | None = None, nbest: int = 0,
    encoded: Encoded | None = None, lm: Any = None,
) -> list[Hypothesis] | list[list[Hypothesis]]:
    """Beam search over a batch, all ``B x K`` hypotheses advanced in one step.

    At each step the ``2K`` best extensions of each utterance are taken; those ending in eos among the best
    ``K`` are finished (as fairseq's search), the best ``K`` that do not end in eos stay alive. An utterance
    stops when its best finished hypothesis outranks what any live one could still reach (live scores only
    fall; the bound divides by the maximum length), when end detection fires (:func:`end_detected`,
    ``opts.end_detect_m``/``end_detect_d``, or every live hypothesis is ``-end_detect_d`` below the best
    ended one), or at its maximum length (then its live hypotheses are
    finished as they are). Stopping at ``K`` finished hypotheses instead lets improbable early-eos
    hypotheses end the search before the right one finishes. The result is the finished hypothesis with the
    best ``norm_score``.

    Memory: the search keeps per hypothesis its tokens, score and decoder/CTC state only; attention weights
    are not kept during the search but recomputed for the chosen hypothesis of each utterance at the end
    (:func:`forced_attention`), so memory does not grow with ``K x L x S``.

    With ``opts.ctc_weight`` λ > 0 every candidate's score is the joint CTC/attention one (module docstring);
    both parts only fall as a hypothesis grows, so the stopping bound still holds. ``score`` is then the
    joint log-score. ``use_ctc`` (default: λ > 0) runs the CTC prefix scorer even at λ = 0 (tests).

    With an ensemble (module docstring) each member advances its own decoder state and CTC prefix state over
    its own encoder frames, reordered with the same source rows; a candidate scores
    ``(1 - λ) mean_m log p_att^m + λ mean_m Δ_ctc^m``; the maximum lengths and ``Hypothesis.attention`` come
    from the first member.

    Parameters and returns as :func:`greedy_search`; with ``nbest`` > 0, one list per utterance of its (at most)
    ``nbest`` best finished hypotheses, best first.

    Raises
    ------
    ValueError
        λ > 0 for a model (or an ensemble member) without a CTC branch; ensemble members that do not share
        the tokenizer's vocabulary and special ids.
    """
    k = opts.beam_size
    lam = float(opts.ctc_weight)
    if use_ctc is None:
        use_ctc = lam > 0
    members, hs, hs_lens = _start(model, xs_pad, xs_lens, k, use_ctc, opts, encoded)
    memory0 = members[0].memory  # every utterance's rows, for forced_attention after rows are dropped
    first = members[0].model  # its special ids are every member's
    b = hs.shape[0]
    dev = hs.device
    v = first.decoder.vocab_size
    max_lens = _max_lens(hs_lens, opts)
    # Only the first beam of each utterance is live at the start.
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    y = torch.full((b * k,), first.sos_id, dtype=torch.long, device=dev)
    hist = torch.empty(b * k, 0, dtype=torch.long, device=dev)
    # Per utterance: (tokens, score, norm_score, ended with eos) of each finished hypothesis.
    finished: list[list[tuple[list[int], float, float, bool]]] = [[] for _ in range(b)]
    ended: list[list[tuple[int, float]]] = [[] for _ in range(b)]  # (step, score) of eos endings
    done = torch.zeros(b, dtype=torch.bool)
    base = (torch.arange(b, device=dev) * k)[:, None]
    # Utterances still searched (row bi of the tensors below is utterance alive[bi]); done ones are dropped
    # from every tensor and member state, so they cost nothing while the others go on (results unchanged).
    alive = list(range(b))
    use_lm = lm is not None and opts.lm_weight > 0
    lm_state = lm.init_state(b * k, dev) if use_lm else None
    for t in range(int(max_lens.max())):
        logp, _ = _ensemble_step(members, y, lam)
        if use_lm:  # shallow fusion: (1 - lambda) att + lambda ctc + beta lm
            lm_logp, lm_state = lm.step(y, lm_state)
            logp = logp + opts.lm_weight * lm_logp
        logp = _mask_special(logp, first).view(-1, k, v)
        cand = (scores[:, :, None] + logp).view(-1, k * v)
        n_cand = min(2 * k, k * v)
        top_scores, top_ids = cand.topk(n_cand, dim=-1)  # (B, 2K)
        beam_idx, tok = top_ids // v, top_ids % v
        is_eos = tok == first.eos_id
        last = (t + 1) >= max_lens  # (B,)
        # Finish: eos candidates ranked within the best K (and not -inf).
        fin = is_eos & (torch.arange(n_cand, device=dev)[None, :] < k) & torch.isfinite(top_scores)
        new_hist_src = base + beam_idx  # (B, 2K) flat source row
        if bool(fin.any()):
            for bi, ci in fin.nonzero().tolist():
                toks = hist[int(new_hist_src[bi, ci])].tolist()
                sc = float(top_scores[bi, ci])
                finished[alive[bi]].append((toks, sc, _norm(sc, len(toks) + 1, opts.length_penalty), True))
                ended[alive[bi]].append((t, sc))
        # Keep the best K non-eos candidates alive: sort key pushes eos ones to the back.
        order = torch.arange(n_cand, device=dev)[None, :] + n_cand * is_eos.long()
        keep = order.argsort(dim=-1)[:, :k]  # (B, K) positions into the 2K candidates
        scores = top_scores.gather(1, keep).masked_fill(is_eos.gather(1, keep), float("-inf"))
        src = new_hist_src.gather(1, keep).view(-1)
        y = tok.gather(1, keep).view(-1)
        for member in members:
            member.select(src, y)
        if use_lm:
            lm_state = lm_state.select(src)
        hist = torch.cat([hist.index_select(0, src), y[:, None]], 1)
        # A live hypothesis can only lose log-probability, so its best possible ranking score is its score
        # now divided by the largest length it may reach; an utterance is done once a finished hypothesis
        # beats that bound for every live one (exact for length_penalty=0), or at its maximum length.
        bound = (scores / (max_lens[:, None].float() + 1) ** opts.length_penalty).max(-1).values.tolist()
        for bi, ui in enumerate(alive):
            if finished[ui] and max(h[2] for h in finished[ui]) >= bound[bi]:
                done[ui] = True
            elif end_detected(ended[ui], t, opts.end_detect_m, opts.end_detect_d) or (
                opts.end_detect_m > 0 and ended[ui] and float(scores[bi].max()) < max(sc for _, sc in ended[ui]) + opts.end_detect_d
            ):
                done[ui] = True
            elif bool(last[bi]):
                # Out of length: the live hypotheses end here (no eos emitted).
                for j in range(k):
                    sc = float(scores[bi, j])
                    if sc == float("-inf"):
                        continue
                    toks = hist[bi * k + j].tolist()
                    finished[ui].append((toks, sc, _norm(sc, len(toks), opts.length_penalty), False))
                done[ui] = True
        if bool(done.all()):
            break
        if bool(done[alive].any()):
            kept = torch.tensor([bi for bi, ui in enumerate(alive) if not done[ui]], dtype=torch.long, device=dev)
            rows = (kept[:, None] * k + torch.arange(k, device=dev)[None, :]).view(-1)
            for member in members:
                member.keep(rows)
            if use_lm:
                lm_state = lm_state.select(rows)
            alive = [alive[bi] for bi in kept.tolist()]
            scores, y, hist, max_lens = scores.index_select(0, kept), y.index_select(0, rows), hist.index_select(0, rows), max_lens.index_select(0, kept.to(max_lens.device))
            base = base[: len(alive)]
    # An utterance can end with nothing finished: every extension scored -inf (joint CTC allows no more tokens
    # than the frames hold, while eos is still blocked by min_len or by the attention window). It gets the empty
    # hypothesis (score -inf, marked as stopped by the length limit) rather than failing its whole batch.
    for f in finished:
        if not f:
            f.append(([], float("-inf"), float("-inf"), False))
    # best first; sorted() is stable, so ties keep their finishing order and [0] is max()'s choice
    ranked = [sorted(f, key=lambda h: h[2], reverse=True)[: nbest or 1] for f in finished]
    # Attention is recomputed for the returned hypotheses only (one teacher-forced decoder pass, batched).
    utt = [bi for bi, r in enumerate(ranked) for _ in r]
    flat = [h for r in ranked for h in r]
    utt_t = torch.tensor(utt, dtype=torch.long, device=dev)
    members[0].memory = memory0
    atts = forced_attention(members[0], utt_t * k, [h[0] for h in flat], hs_lens.index_select(0, utt_t.to(hs_lens.device)), [h[3] for h in flat])
    hyps = iter(Hypothesis(toks, sc, norm, att, reached_limit=not eos) for (toks, sc, norm, eos), att in zip(flat, atts))
    out = [[next(hyps) for _ in r] for r in ranked]
    return out if nbest else [r[0] for r in out]


def decode_batch(model: Models, xs_pad: Tensor, xs_lens: Tensor, opts: DecodingOptions, encoded: Encoded | None = None, lm: Any = None) -> list[Hypothesis]:
    """CTC greedy when ``opts.ctc_weight == 1`` and ``beam_size == 1`` (an ensemble: CTC-only beam search with
    one hypothesis, the mean of the members' prefix scores); attention greedy when ``beam_size == 1`` and
    ``ctc_weight == 0``; else (joint) beam search. ``model``: one model or an ensemble (module docstring); ``encoded``: the first model's
    encoder output when already computed (:func:`greedy_search`); ``lm``: an LM fused with ``opts.lm_weight`` (CTC
    greedy has no per-token step to fuse it into, so with an LM that case runs as a one-hypothesis beam search)."""
    fuse = lm is not None and opts.lm_weight > 0
    if opts.ctc_weight >= 1.0 and opts.beam_size <= 1 and len(ensemble_members(model)) == 1 and not fuse:
        return ctc_greedy_search(model, xs_pad, xs_lens, opts, encoded)
    if opts.beam_size <= 1 and opts.ctc_weight == 0:
        return greedy_search(model, xs_pad, xs_lens, opts, encoded, lm=lm)
    return beam_search(model, xs_pad, xs_lens, opts, encoded=encoded, lm=lm)


def resolve_options(model: Models | None, given: dict[str, Any] | None = None) -> DecodingOptions:
    """The search options for ``model`` (one model or an ensemble): ``given`` (field name -> value, only the
    options the user set) over the :class:`DecodingOptions` defaults, except that when ``ctc_weight`` is not
    given and a member has no CTC branch, λ is 0 (attention only) instead of the default. ``model`` None
    only checks ``given`` (before a model is loaded).

    A value given as a string (a command line, a YAML file) is read as the field's type (``"4"`` -> 4,
    ``"0.5"`` -> 0.5); numbers are passed as they are, so :meth:`DecodingOptions.__post_init__` refuses a
    non-integral ``beam_size`` instead of truncating it.

    Raises
    ------
    ValueError
        A key of ``given`` that is not a :class:`DecodingOptions` field (the message lists the fields), a
        string that is not a number of the field's type, or an invalid value (from :class:`DecodingOptions`).
    """
    names = {f.name for f in fields(DecodingOptions)}
    unknown = sorted(set(given or {}) - names)
    if unknown:
        raise ValueError(f"unknown decoding option(s) {unknown}; choose from {sorted(names)}")
    given = {k: _from_string(k, v) for k, v in (given or {}).items()}
    if model is not None and "ctc_weight" not in given and any(m.ctc is None for m in ensemble_members(model)):
        given["ctc_weight"] = 0.0
    return DecodingOptions(**given)


def _from_string(name: str, value: Any) -> Any:
    """``value`` read as option ``name``'s type when it is a string, else unchanged (ValueError naming the
    option when the string is no such number)."""
    if not isinstance(value, str):
        return value
    ftype = {f.name: f.type for f in fields(DecodingOptions)}[name]
    if ftype in (bool, "bool"):
        low = value.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"{name} must be true or false, got {value!r}")
    kind = int if ftype in (int, "int") else float
    try:
        return kind(value.strip())
    except ValueError:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
