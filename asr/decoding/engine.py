"""The one batch decoding engine behind ``asr-decode``, ``asr-transcribe`` and :meth:`asr.inference.Speech2Text.transcribe`.

    engine = Engine.load("models/an4_pblstm_x4", batch_size=16, segments=SegmentOptions(max_s=6.0))
    for res in engine.run([EngineInput("a", path="a.wav"), EngineInput("b", wav=waveform_16k)], timestamps=True):
        print(res.key, res.error or " ".join(engine.tokenizer.decode(u.hyp.tokens) for u in res.units))

Pipeline, per input: load and resample (:func:`~asr.features.audio.load_audio`) -> fbank
(:func:`~asr.features.fbank.compute_fbank` with the model's front-end settings; CMVN is applied inside the model) ->
long-form segmentation (:func:`~asr.decoding.longform.find_segments`: a recording longer than ``segments.max_s`` is
decoded as segments cut at pauses) -> length-sorted batches of at most ``batch_size`` units and ``max_frames`` padded
frames (:class:`~asr.data.dataset.LengthBucketBatchSampler`) -> search (:func:`~asr.decoding.search.decode_batch`:
greedy, beam, joint CTC/attention, windowed, ensemble; :func:`~asr.decoding.search.beam_search` for n-best lists) ->
token timestamps (seconds from the start of the input) -> one :class:`InputResult` per input, in input order.

No speech: a unit (an input, or a long-form segment) whose fbank shows no speech
(:func:`~asr.decoding.nospeech.is_no_speech` with ``DecodingOptions.no_speech_db``; silence, hum, steady noise) is
not searched: it gets an empty hypothesis and ``Unit.no_speech``. Hypotheses stopped by the length limit rather
than eos (``Hypothesis.reached_limit``) and no-speech units are counted in ``Engine.stats``.

Input warnings: one :class:`~asr.features.audio.AudioInputWarning` (Python :mod:`warnings`) per :meth:`Engine.run`
call and kind, with counts, issued when the inputs have all been read (before the last results are yielded):
inputs whose sample rate is below the model's (files, or waveforms with ``EngineInput.sample_rate``), and integer
waveforms scaled to [-1, 1] (``EngineInput.int_dtype``, :func:`~asr.features.audio.waveform_to_float`).

Error isolation: an input that cannot be read, is shorter than the model accepts or holds bad features gets
``InputResult.error`` (a one-line reason); a batch whose search fails is decoded again unit by unit and a unit
that fails alone gets ``Unit.error``. Nothing one input does stops the others.

Memory: features are computed for a run of consecutive inputs of at most ``chunk_frames`` fbank frames (plus the
input that crosses the limit), decoded, and dropped before the next run is read; so memory is bounded by the chunk
(and one long recording), not by the number of inputs. Inputs are sorted by length within a chunk only.

This module imports no CLI or Lightning code; the decode folder (``asr-decode``'s outputs, resume, locking) is
:mod:`asr.decoding.results` and :mod:`asr.decoding.decode_dir`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asr.data.dataset import LengthBucketBatchSampler
from asr.decoding.ctc import ctc_align
from asr.decoding.longform import SegmentOptions, find_segments, segment_id
from asr.decoding.search import DecodingOptions, Hypothesis, beam_search, ctc_log_probs, decode_batch, resolve_options
from asr.decoding.nospeech import is_no_speech
from asr.features.audio import AudioError, AudioInputWarning, read_audio
from asr.features.fbank import FbankOptions, compute_fbank
from asr.models.asr_model import ENCODER_DTYPES, AttentionASRModel
from asr.models.pretrained import load_model
from asr.text.tokenizer import Tokenizer
from asr.utils.io import file_sha256

__all__ = ["EngineInput", "Unit", "InputResult", "Engine", "load_members", "min_input_frames", "utt_id_for", "model_sha256", "check_batching", "check_device", "check_encoder_dtype", "CHUNK_FRAMES"]

log = logging.getLogger("asr.decode")

#: Default fbank frames held at once by :meth:`Engine.run` (100 frames = 1 s; 180000 frames = 30 min, 58 MB of
#: 80-dim float32 features).
CHUNK_FRAMES = 180_000


@dataclass
class EngineInput:
    """One input: exactly one of ``path`` (an audio file, resampled to the model's rate), ``wav`` (a 1-D float
    waveform already at the model's rate, ``(num_samples,)``) or ``feats`` (``(T, F)`` fbank, e.g. a dump).

    ``key`` names it (unique within a run; a long recording's segments are ``segment_id(key, k)``); ``ref`` and
    ``speaker`` are carried along; ``error``, when set, is a reason known before decoding (the input is not read).
    For ``wav``: ``sample_rate``, the rate (Hz) it had before it was resampled to the model's, and ``int_dtype``,
    the integer type it was scaled from (``"int16"``), when known; :meth:`Engine.run` warns about both
    (module docstring).
    """

    key: str
    path: str | None = None
    wav: Tensor | None = field(default=None, repr=False)
    feats: Tensor | None = field(default=None, repr=False)
    ref: str = ""
    speaker: str = "unknown"
    error: str | None = None
    sample_rate: int | None = None
    int_dtype: str | None = None


@dataclass
class Unit:
    """A decoded stretch of an input: the whole input, or one long-form segment.

    Attributes
    ----------
    unit_id : str
        The input's key, or its segment id (:func:`~asr.decoding.longform.segment_id`).
    start, end : int
        Its fbank frames ``[start, end)`` within the input.
    hyp : Hypothesis or None
        The best hypothesis (None: failed, or reused through ``cached``).
    nbest : list of Hypothesis or None
        With ``nbest`` > 1: at most that many hypotheses with distinct texts, best first.
    enc_frames : int
        Encoder frames of the first model.
    spans : list of (float, float) or None
        With ``timestamps``: per token of ``hyp``, start and end in seconds from the start of the INPUT.
    timestamps : str
        ``"ctc"`` (CTC alignment) or ``"attention"`` (attention peaks), see :meth:`Engine.token_spans`.
    error : str or None
        Why the search failed on it alone.
    cached : any
        What the ``cached`` callback of :meth:`Engine.run` returned for it (then it was not decoded).
    nbest_spans : list or None
        With ``nbest`` and ``timestamps``: the ``spans`` of each hypothesis of ``nbest``.
    no_speech : bool
        The unit was decided to hold no speech (module docstring): not searched, ``hyp`` is empty.
    """

    unit_id: str
    start: int
    end: int
    hyp: Hypothesis | None = None
    nbest: list[Hypothesis] | None = None
    enc_frames: int = 0
    spans: list[tuple[float, float]] | None = None
    timestamps: str = "attention"
    error: str | None = None
    cached: Any = None
    nbest_spans: list[list[tuple[float, float]]] | None = None
    no_speech: bool = False

    @property
    def n_frames(self) -> int:
        """fbank frames of the unit."""
        return self.end - self.start


@dataclass
class InputResult:
    """The outcome of one input: its ``units`` (one, or its long-form segments in time order) or an ``error``.

    ``index`` is its position in the inputs, ``n_frames`` its fbank frames, ``duration`` its seconds (samples /
    rate for audio), ``frame_shift_s`` the fbank hop (segment bounds in seconds: ``start * frame_shift_s``).
    """

    index: int
    input: EngineInput
    n_frames: int = 0
    duration: float = 0.0
    frame_shift_s: float = 0.01
    units: list[Unit] = field(default_factory=list)
    error: str | None = None

    @property
    def key(self) -> str:
        return self.input.key

    @property
    def segmented(self) -> bool:
        """Whether it was decoded as several long-form segments."""
        return len(self.units) > 1


def utt_id_for(path: str, taken: set[str]) -> str:
    """Utterance id of a user audio file: its stem with whitespace, ``()`` (an sclite trn line cannot hold them), other
    control characters and bytes that are not UTF-8 (a ``surrogateescape`` name: they could not be written to the
    UTF-8 outputs or as ``attention.npz`` member names) replaced by ``_``, made unique with ``-2``, ``-3``, ... when two
    files give the same id (``taken`` is updated). The file's own name stays in ``results.jsonl``'s ``path``."""
    stem = "".join("_" if (c.isspace() or c in "()" or not c.isprintable()) else c for c in Path(path).stem) or "utt"
    uid, k = stem, 1
    while uid in taken:
        k += 1
        uid = f"{stem}-{k}"
    taken.add(uid)
    return uid


def model_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file (:func:`~asr.utils.io.file_sha256`), or of a model directory's files (names
    and contents, sorted by name)."""
    p = Path(path)
    if not p.is_dir():
        return file_sha256(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.iterdir() if x.is_file()):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def min_input_frames(models: Sequence[AttentionASRModel], limit: int = 4096) -> int:
    """Fewest feature frames every member's encoder turns into at least one encoder frame (its subsampling).

    Raises
    ------
    ValueError
        No count up to ``limit`` works.
    """
    for n in range(1, limit + 1):
        if all(int(m.encoder.output_lengths(torch.tensor([n]))[0]) >= 1 for m in models):
            return n
    raise ValueError(f"no input of up to {limit} frames gives an encoder frame")


def _vocab_difference(a: Tokenizer, b: Tokenizer) -> str | None:
    """How tokenizer ``b`` differs from ``a`` in what decoding depends on (size, special ids, the piece of
    every id), or None when it does not."""
    if a.vocab_size != b.vocab_size:
        return f"vocab_size {b.vocab_size} instead of {a.vocab_size}"
    for name in ("pad_id", "unk_id", "sos_id", "eos_id"):
        if getattr(a, name) != getattr(b, name):
            return f"{name} {getattr(b, name)} instead of {getattr(a, name)}"
    for i in range(a.vocab_size):
        if a.sp.id_to_piece(i) != b.sp.id_to_piece(i):
            return f"token {i} is {b.sp.id_to_piece(i)!r} instead of {a.sp.id_to_piece(i)!r}"
    return None


def load_members(paths: Sequence[str | Path]) -> tuple[list[AttentionASRModel], Tokenizer, FbankOptions, dict[str, Any]]:
    """Load one model or an ensemble: each path a model directory or a ``.ckpt`` checkpoint
    (:func:`~asr.models.pretrained.load_model`); the first gives the tokenizer, the features and ``info``
    (``model_cfg``, ``decoding``: its recorded search options).

    Raises
    ------
    FileNotFoundError
        A path is neither (the message names it and where it looked).
    ValueError
        A member's tokenizer (vocabulary pieces, special ids) or features (``num_mel_bins``, frame shift) differ
        from those of the first; the message names the member and what differs.
    """
    if not paths:
        raise ValueError("no model given")
    model, tok, fbank, info = load_model(paths[0])
    models = [model]
    for path in paths[1:]:
        m, member_tok, _, member_info = load_model(path)
        diff = _vocab_difference(tok, member_tok)
        if diff:
            raise ValueError(f"ensemble checkpoint {path}: its tokenizer differs from that of ckpt {paths[0]} ({diff}); members must share one tokenizer")
        for key in ("feat_dim", "frame_shift_s"):
            mine, theirs = member_info[key], info[key]
            if mine != theirs:
                raise ValueError(f"ensemble checkpoint {path}: {key} {mine} differs from {theirs} of ckpt {paths[0]}; members must share the features")
        models.append(m)
    return models, tok, fbank, info


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device.

    Raises
    ------
    ValueError
        Not a device name, or a CUDA device on a machine without one (the message says what is available).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a device name (cpu, cuda, cuda:1, ...): {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is available on this machine (use device=cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def check_encoder_dtype(name: Any, device: torch.device | None = None) -> torch.dtype | None:
    """The encoder compute dtype ``name`` (``"float32"`` or ``"bfloat16"``, :data:`ENCODER_DTYPES`) asks for on
    ``device``, for :meth:`AttentionASRModel.set_encoder_dtype`: None for float32, and for bfloat16 on a CPU without
    native bf16 (no AMX / AVX512-BF16: oneDNN would emulate it several times slower, as
    ``asr.cli.train.cpu_precision`` measured), with a warning. ``device`` None: only the name is checked (settings
    checked before a model is loaded).

    Raises
    ------
    ValueError
        ``name`` is not one of :data:`ENCODER_DTYPES`.
    """
    if name not in ENCODER_DTYPES:
        raise ValueError(f"encoder_dtype must be one of {', '.join(ENCODER_DTYPES)}, got {name!r}")
    dtype = ENCODER_DTYPES[name]
    if dtype is torch.bfloat16 and device is not None and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        warnings.warn("encoder_dtype=bfloat16 asked for on a CPU without native bf16 (no AMX / AVX512-BF16): the encoder runs in float32", RuntimeWarning, stacklevel=3)
        return None
    return dtype


def check_batching(batch_size: Any, max_frames: Any) -> None:
    """Raises ValueError unless ``batch_size`` is an integer >= 1 and ``max_frames`` an integer >= 0 (0: no cap)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 0:
        raise ValueError(f"max_frames must be an integer >= 0 (0: no cap), got {max_frames!r}")


class Engine:
    """Loaded models with their tokenizer, front end, search options and batching settings.

    Parameters
    ----------
    models : AttentionASRModel or a sequence of them (an ensemble; the first gives the attention weights,
        ``enc_frames`` and the timestamps)
    tokenizer : Tokenizer
    fbank : FbankOptions
        The front end the models were trained with.
    options : DecodingOptions
        The default search options (:meth:`run` takes others per call).
    device : str or torch.device
    batch_size : int
        Most units per batch (>= 1).
    max_frames : int
        Most padded fbank frames per batch (``B x T_max``; 0 = no cap); a longer unit is decoded alone.
    segments : SegmentOptions, optional
        Long-form segmentation (``max_s`` 0 or None: never split); its ``frame_shift_s`` is set to ``fbank``'s.
    chunk_frames : int
        fbank frames held at once (module docstring).
    info : dict, optional
        What is known of the model (:meth:`load`: ``model_cfg``, ``decoding``, ``feat_dim``, ``frame_shift_s``).
    encoder_dtype : str
        ``"float32"`` (default) or ``"bfloat16"``: the encoders' compute dtype (:func:`check_encoder_dtype`,
        :meth:`AttentionASRModel.set_encoder_dtype`; decoder and search scores stay float32). On the AN4 test set
        the shipped model gives the same 130 hypotheses either way, greedy and beam 10 + CTC 0.3.

    Attributes
    ----------
    stats : dict
        Since the engine was made: ``n_batches``, ``decode_s`` (seconds spent in batches), ``audio_s`` (seconds of
        audio decoded), ``n_length_limit`` (units whose best hypothesis was stopped by the length limit,
        ``max_len_ratio``, instead of eos) and ``n_no_speech`` (units decided to hold no speech, not searched).

    Raises
    ------
    ValueError
        A bad ``batch_size``/``max_frames`` (:func:`check_batching`), ``device`` (a CUDA device without a GPU) or
        ``encoder_dtype``.
    """

    def __init__(
        self, models: AttentionASRModel | Sequence[AttentionASRModel], tokenizer: Tokenizer, fbank: FbankOptions, options: DecodingOptions,
        device: str | torch.device = "cpu", batch_size: int = 16, max_frames: int = 20000, segments: SegmentOptions | None = None,
        chunk_frames: int = CHUNK_FRAMES, info: dict[str, Any] | None = None, lm: Any = None, encoder_dtype: str = "float32",
    ) -> None:
        check_batching(batch_size, max_frames)
        self.device = check_device(device)
        dtype = check_encoder_dtype(encoder_dtype, self.device)
        members = [models] if isinstance(models, AttentionASRModel) else list(models)
        self.models = [m.to(self.device).eval() for m in members]
        for m in self.models:
            m.set_encoder_dtype(dtype)
        self.tokenizer, self.fbank, self.options = tokenizer, fbank, options
        self.batch_size, self.max_frames, self.chunk_frames = batch_size, max_frames, max(1, int(chunk_frames))
        self.segments = dataclasses.replace(segments or SegmentOptions(max_s=0.0, min_s=0.0), frame_shift_s=fbank.frame_shift_s)
        self.min_frames = min_input_frames(self.models)
        self.info = dict(info or {})
        self.lm = lm.to(self.device).eval() if lm is not None else None  # shallow fusion (asr.models.lm; options.lm_weight)
        self.stats = {"n_batches": 0, "decode_s": 0.0, "audio_s": 0.0, "n_length_limit": 0, "n_no_speech": 0}

    @classmethod
    def load(cls, path: str | Path, ensemble: Sequence[str | Path] = (), options: dict[str, Any] | None = None, lm: str | Path | None = None, **kw: Any) -> "Engine":
        """An engine for a model directory or checkpoint (plus ``ensemble`` members): search options ``options``
        over the model's recorded ones over the defaults (:func:`~asr.decoding.search.resolve_options`); ``lm`` a
        language model file (``asr-train-lm``, :func:`asr.models.lm.load_lm`: refused when its tokenizer is not the
        model's) fused with ``lm_weight``; ``kw`` as the constructor's. Raises as :func:`load_members`,
        :func:`~asr.decoding.search.resolve_options`, :func:`~asr.models.lm.load_lm` and the constructor."""
        paths = [path, *ensemble]
        models, tok, fbank, info = load_members(paths)
        if lm:
            from asr.models.lm import load_lm

            kw["lm"] = load_lm(lm, tok)
        opts = resolve_options(models, {**info["decoding"], **(options or {})})
        if len(models) > 1 and opts.ctc_weight > 0:
            for p, m in zip(paths, models):
                if m.ctc is None:
                    raise ValueError(f"checkpoint {p} has no CTC branch: ensemble decoding with ctc_weight > 0 needs one in every member")
        return cls(models, tok, fbank, opts, info=info, **kw)

    @property
    def model(self) -> AttentionASRModel:
        """The first model."""
        return self.models[0]

    # ---- input ----------------------------------------------------------------------------------------------
    def min_duration_s(self) -> float:
        """Shortest audio (seconds) the models accept: one fbank window plus the hops to ``min_frames`` frames."""
        f = self.fbank
        return (f.frame_length_ms + (self.min_frames - 1) * f.frame_shift_ms) / 1000

    def features(self, inp: EngineInput) -> tuple[Tensor, float]:
        """``(T, F)`` fbank of an input and its duration in seconds.

        Raises
        ------
        asr.features.audio.AudioError
            The file cannot be used (:func:`~asr.features.audio.load_audio`).
        ValueError
            The input is shorter than the models accept (``too short: 0.030 s < minimum 0.095 s``), a waveform
            holds NaN/Inf or is not 1-D, features have the wrong shape, too few frames or NaN/Inf values.
        """
        x, duration, _ = self._features(inp)
        return x, duration

    def _features(self, inp: EngineInput) -> tuple[Tensor, float, int | None]:
        """:meth:`features` and the input's sample rate before resampling (None: unknown, e.g. features given)."""
        f = self.fbank
        if inp.feats is not None:
            x = inp.feats
            if x.ndim != 2 or x.shape[1] != f.num_mel_bins:
                raise ValueError(f"feature dump entry has shape {tuple(x.shape)}, expected (T, {f.num_mel_bins})")
            if x.shape[0] < self.min_frames:
                raise ValueError(f"too short: {x.shape[0]} feature frames ({1000 * x.shape[0] * f.frame_shift_s:.0f} ms) < minimum {self.min_frames} ({1000 * self.min_frames * f.frame_shift_s:.0f} ms)")
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"feature dump entry holds {int((~torch.isfinite(x)).sum())} NaN or infinite value(s)")
            return x, (x.shape[0] - 1) * f.frame_shift_s + f.frame_length_ms / 1000, None
        rate = inp.sample_rate
        if inp.path is not None:
            wav, rate = read_audio(inp.path, f.sample_rate)
        elif inp.wav is not None:
            wav = inp.wav
            if wav.dim() != 1:
                raise ValueError(f"an in-memory waveform must be 1-D (num_samples,), got shape {tuple(wav.shape)}")
            if not bool(torch.isfinite(wav).all()):
                raise ValueError("the waveform contains NaN or infinite samples")
        else:
            raise ValueError(f"input {inp.key} has no path, waveform or features")
        duration = wav.numel() / f.sample_rate
        need = math.ceil(f.sample_rate * self.min_duration_s())
        if wav.numel() < need:
            raise ValueError(f"too short: {duration:.3f} s < minimum {need / f.sample_rate:.3f} s")
        return compute_fbank(wav, f), duration, rate

    # ---- output -----------------------------------------------------------------------------------------------
    def token_spans(self, h: Hypothesis, ctc_logp: Tensor | None, n_enc: int, duration: float) -> tuple[list[tuple[float, float]], str]:
        """Seconds ``(start, end)`` per token of ``h`` (clipped to ``duration``), and their source: ``"ctc"`` (the
        Viterbi alignment to the first model's CTC posteriors ``ctc_logp (S, V)``, :func:`~asr.decoding.ctc.ctc_align`:
        a token spans its first to last aligned encoder frame) or ``"attention"`` (no CTC branch, or no CTC path
        has that labelling: token ``u`` starts at the arg-max frame of its attention row and ends where the
        next token's, or eos's, peak is). Resolution: one encoder frame."""
        spf = self.fbank.frame_shift_s * self.model.subsampling_factor
        frames = ctc_align(ctc_logp[:n_enc], h.tokens, self.model.pad_id) if ctc_logp is not None else None
        how = "ctc"
        if frames is None:
            how = "attention"
            peaks = h.attention.float()[:, :n_enc].argmax(-1).tolist()
            if len(peaks) == len(h.tokens):
                peaks.append(n_enc - 1)
            frames = [(peaks[u], max(peaks[u], peaks[u + 1] - 1)) for u in range(len(h.tokens))]
        return [(round(min(a * spf, duration), 3), round(min((b + 1) * spf, duration), 3)) for a, b in frames], how

    def distinct_texts(self, hyps: list[Hypothesis], n: int) -> list[Hypothesis]:
        """The first ``n`` of ``hyps`` (best first) whose decoded texts differ."""
        out, seen = [], set()
        for h in hyps:
            text = self.tokenizer.decode(h.tokens)
            if text not in seen:
                seen.add(text)
                out.append(h)
        return out[:n]

    # ---- decoding ---------------------------------------------------------------------------------------------
    def run(
        self, inputs: Sequence[EngineInput], options: DecodingOptions | None = None, nbest: int = 1, timestamps: bool = False, batch_size: int | None = None,
        cached: Callable[[InputResult, Unit], Any] | None = None, on_batch: Callable[[list[tuple[InputResult, Unit]]], None] | None = None,
        all_keys: set[str] | None = None,
    ) -> Iterator[InputResult]:
        """Decode ``inputs``: an iterator of one :class:`InputResult` per input, in input order (a chunk at a time).
        The arguments are checked at the call, the inputs read as the iterator is consumed.

        Parameters
        ----------
        options : DecodingOptions, optional
            This call's search options (default: the engine's).
        nbest : int
            > 1: every unit's ``nbest`` holds at most that many hypotheses with distinct texts (beam search).
        timestamps : bool
            Fill ``Unit.spans`` (for a model with a CTC branch, from its CTC posteriors; the encoder still runs
            once per batch).
        batch_size : int, optional
            This call's most units per batch (default: the engine's).
        cached : callable, optional
            ``cached(result, unit)``, asked for every unit before decoding: a value other than None is stored in
            ``unit.cached`` and the unit is not decoded (resuming).
        on_batch : callable, optional
            Called after each decoded batch with its ``(result, unit)`` pairs (saving partial results).
        all_keys : set of str, optional
            The ids of the whole job when ``inputs`` are one part of it (a shard of a parallel decode): a long
            recording's segment id must not equal any of them. Default: the keys of ``inputs``.

        Raises
        ------
        ValueError
            ``nbest`` > 1 with a beam smaller than ``nbest``; ``ctc_weight`` > 0 with a model (or ensemble member)
            without a CTC branch; ``batch_size`` not an integer >= 1; two inputs with the same key. Errors of single
            inputs are not raised (module docstring): a long recording whose segment id equals another input's key
            gets ``InputResult.error``.
        """
        opts = options or self.options
        if not isinstance(nbest, int) or nbest < 1:
            raise ValueError(f"nbest must be an integer >= 1, got {nbest!r}")
        if nbest > 1 and opts.beam_size < nbest:
            raise ValueError(f"nbest={nbest} needs beam_size >= {nbest} (decoding with beam_size={opts.beam_size})")
        if opts.lm_weight > 0 and self.lm is None:
            raise ValueError(f"lm_weight={opts.lm_weight} needs a language model (lm=<file of asr-train-lm>)")
        missing = [i for i, m in enumerate(self.models) if m.ctc is None]
        if opts.ctc_weight > 0 and missing:
            which = "the model has" if len(self.models) == 1 else f"ensemble member(s) {missing} have"
            raise ValueError(f"ctc_weight={opts.ctc_weight} needs a CTC branch, and {which} none (use ctc_weight=0)")
        batch_size = self.batch_size if batch_size is None else batch_size
        check_batching(batch_size, self.max_frames)
        inputs = list(inputs)
        keys = [i.key for i in inputs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"input keys repeat: {sorted({k for k in keys if keys.count(k) > 1})[:5]}")
        return self._run(inputs, set(keys) | set(all_keys or ()), opts, nbest, timestamps, batch_size, cached, on_batch)

    def _run(self, inputs, keys, opts, nbest, timestamps, batch_size, cached, on_batch) -> Iterator[InputResult]:
        """The generator of :meth:`run` (its arguments checked)."""
        chunk: list[tuple[InputResult, Tensor | None]] = []
        held = 0
        low_rates: dict[int, int] = {}  # sample rate below the model's -> inputs
        int_types: dict[str, int] = {}  # integer dtype scaled to [-1, 1] -> inputs
        for idx, inp in enumerate(inputs):
            res = InputResult(idx, inp, frame_shift_s=self.fbank.frame_shift_s, error=inp.error)
            x = None
            if res.error is None:
                try:
                    x, res.duration, rate = self._features(inp)
                    res.n_frames = int(x.shape[0])
                    held += res.n_frames
                    if rate is not None and rate < self.fbank.sample_rate:
                        low_rates[rate] = low_rates.get(rate, 0) + 1
                except (AudioError, ValueError) as exc:
                    res.error = exc.reason if isinstance(exc, AudioError) else str(exc)
            if inp.int_dtype is not None:
                int_types[inp.int_dtype] = int_types.get(inp.int_dtype, 0) + 1
            chunk.append((res, x))
            if held >= self.chunk_frames and idx < len(inputs) - 1:
                yield from self._run_chunk(chunk, keys, opts, nbest, timestamps, batch_size, cached, on_batch)
                chunk, held = [], 0
        self._warn_inputs(len(inputs), low_rates, int_types)
        if chunk:
            yield from self._run_chunk(chunk, keys, opts, nbest, timestamps, batch_size, cached, on_batch)

    def _warn_inputs(self, n_inputs: int, low_rates: dict[int, int], int_types: dict[str, int]) -> None:
        """The run's input warnings (:class:`~asr.features.audio.AudioInputWarning`, module docstring): at most one per kind,
        issued on every call (no once-per-location registry, so a second run with the same inputs warns again)."""
        rate = self.fbank.sample_rate
        if low_rates:
            n = sum(low_rates.values())
            rates = ", ".join(f"{r} Hz: {c}" for r, c in sorted(low_rates.items()))
            _warn(
                f"{n} of {n_inputs} input(s) have a lower sample rate than the model's {rate} Hz ({rates}): they were upsampled, "
                f"but the band above half their rate is missing and recognition degrades badly (AN4 test at 8 kHz: 119 % WER "
                f"with the 16 kHz AN4 model); give audio recorded at {rate} Hz or use a model trained on narrowband audio"
            )
        if int_types:
            n = sum(int_types.values())
            kinds = ", ".join(f"{t}: {c}" for t, c in sorted(int_types.items()))
            _warn(
                f"{n} of {n_inputs} in-memory waveform(s) are integer arrays ({kinds}): scaled to [-1, 1] by their full scale "
                "(int16 / 32768, as PCM files are read); pass float arrays in [-1, 1] to silence this"
            )

    def _run_chunk(self, chunk, keys, opts, nbest, timestamps, batch_size, cached, on_batch) -> Iterator[InputResult]:
        """Segment, batch and decode the inputs of one chunk (``(result, feats or None)`` pairs); yields the results."""
        todo: list[tuple[InputResult, Unit, Tensor]] = []
        for res, x in chunk:
            if x is None:
                continue
            bounds = find_segments(x, self.segments)
            clash = [segment_id(res.key, k) for k in range(len(bounds))] if len(bounds) > 1 else []
            clash = [u for u in clash if u in keys]
            if clash:  # this input only: an error entry, the others are decoded (the ids would collide in the outputs)
                res.error = f"its segment id {clash[0]} (a long recording is decoded in segments) is also another input's id; rename one of the two files"
                continue
            for k, (a, b) in enumerate(bounds):
                uid = res.key if len(bounds) == 1 else segment_id(res.key, k)
                unit = Unit(uid, a, b)
                res.units.append(unit)
                unit.cached = cached(res, unit) if cached else None
                if unit.cached is None:
                    todo.append((res, unit, x[a:b]))
        n_split = sum(1 for res, _ in chunk if res.segmented)
        if n_split:
            log.info("%d recording(s) longer than %g s split into %d segments", n_split, self.segments.max_s, sum(len(r.units) for r, _ in chunk if r.segmented))
        if todo:
            sampler = LengthBucketBatchSampler([u.n_frames for _, u, _ in todo], batch_size, self.max_frames, shuffle=False, num_replicas=1, rank=0)
            for idx in sampler:
                self._decode([todo[i] for i in idx], opts, nbest, timestamps)
                if on_batch:
                    on_batch([(todo[i][0], todo[i][1]) for i in idx])
        for res, _ in chunk:
            yield res

    @torch.inference_mode()
    def _decode(self, items: list[tuple[InputResult, Unit, Tensor]], opts: DecodingOptions, nbest: int, timestamps: bool) -> None:
        """Decode one batch of units (filling them in place); units without speech are not searched."""
        t0 = time.perf_counter()
        shift = self.fbank.frame_shift_s
        silent = [is_no_speech(x, opts.no_speech_db) for _, _, x in items]
        for (res, unit, x), no in zip(items, silent):
            if no:
                self._no_speech(unit, x, nbest, timestamps)
        items = [it for it, no in zip(items, silent) if not no]
        if items:
            self._search(items, opts, nbest, timestamps)
        self.stats["n_batches"] += 1
        self.stats["decode_s"] += time.perf_counter() - t0

    def _no_speech(self, unit: Unit, x: Tensor, nbest: int, timestamps: bool) -> None:
        """Fill a unit decided to hold no speech: an empty hypothesis (score 0, an all-zero eos attention row)."""
        unit.enc_frames = int(self.model.encoder.output_lengths(torch.tensor([x.shape[0]]))[0])
        unit.no_speech = True
        unit.hyp = Hypothesis([], 0.0, 0.0, torch.zeros(1, unit.enc_frames))
        unit.nbest = [unit.hyp] if nbest > 1 else None
        if timestamps:
            unit.spans, unit.nbest_spans = [], [[]] if nbest > 1 else None
        self.stats["n_no_speech"] += 1
        self.stats["audio_s"] += x.shape[0] * self.fbank.frame_shift_s

    def _search(self, items: list[tuple[InputResult, Unit, Tensor]], opts: DecodingOptions, nbest: int, timestamps: bool) -> None:
        """Search one batch of units (filling them in place)."""
        feats = [x for _, _, x in items]
        xs = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(self.device)
        lens = torch.tensor([f.shape[0] for f in feats], device=self.device)
        outs = _decode_isolated(self.models, xs, lens, opts, nbest=nbest, ctc_posteriors=timestamps, lm=self.lm)
        enc_lens = self.model.encoder.output_lengths(lens).tolist()
        shift = self.fbank.frame_shift_s
        for j, ((res, unit, x), out) in enumerate(zip(items, outs)):
            unit.enc_frames = int(enc_lens[j])
            self.stats["audio_s"] += x.shape[0] * shift
            if isinstance(out, Exception):
                log.error("decoding %s failed: %s: %s", unit.unit_id, type(out).__name__, out)
                unit.error = f"decoding failed ({type(out).__name__}: {out})"
                continue
            hyps, lp = out
            unit.hyp = hyps[0]
            self.stats["n_length_limit"] += int(unit.hyp.reached_limit)
            unit.nbest = self.distinct_texts(hyps, nbest) if nbest > 1 else None
            if timestamps:
                offset = unit.start * shift
                length = res.duration - offset if len(res.units) == 1 else unit.n_frames * shift
                spans, unit.timestamps = self.token_spans(unit.hyp, lp, unit.enc_frames, length)
                unit.spans = [(round(a + offset, 3), round(b + offset, 3)) for a, b in spans]
                if unit.nbest:
                    unit.nbest_spans = [[(round(a + offset, 3), round(b + offset, 3)) for a, b in self.token_spans(g, lp, unit.enc_frames, length)[0]] for g in unit.nbest]


def _warn(message: str) -> None:
    """Issue an :class:`~asr.features.audio.AudioInputWarning` every time (``registry=None``: Python's default
    once-per-location-and-message filter would hide the same message in a later run of the same process)."""
    warnings.warn_explicit(message, AudioInputWarning, __file__, _warn.__code__.co_firstlineno, module="asr.decoding.engine", registry=None)


def _search(models: list[AttentionASRModel], xs: Tensor, lens: Tensor, opts: DecodingOptions, nbest: int, ctc_posteriors: bool, lm: Any = None) -> list[tuple[list[Hypothesis], Tensor | None]]:
    """Per utterance: its hypotheses, best first (one from :func:`decode_batch`, or with ``nbest`` > 1 the beam's
    finished ones, up to ``2 * nbest`` to leave room for hypotheses whose texts coincide), and with
    ``ctc_posteriors`` the first model's ``(S, V)`` CTC log-posteriors (None without a CTC branch). The encoder
    output behind those posteriors is handed to the search, so the encoder runs once."""
    first, encoded, ctc = models[0], None, None
    if ctc_posteriors and first.ctc is not None:
        encoded = first.encode(xs, lens)
        ctc = ctc_log_probs(first, encoded[0]).cpu()
    if nbest > 1:
        lists = beam_search(models, xs, lens, opts, nbest=2 * nbest, encoded=encoded, lm=lm)
    else:
        lists = [[h] for h in decode_batch(models, xs, lens, opts, encoded=encoded, lm=lm)]
    return [(hyps, ctc[i] if ctc is not None else None) for i, hyps in enumerate(lists)]


def _decode_isolated(models: list[AttentionASRModel], xs: Tensor, lens: Tensor, opts: DecodingOptions, nbest: int = 1, ctc_posteriors: bool = False, lm: Any = None) -> list[tuple[list[Hypothesis], Tensor | None] | Exception]:
    """:func:`_search`, one failure not taking the others down: when the batch fails it is decoded one
    utterance at a time and an utterance that fails alone gets its exception in place of its result."""
    try:
        return list(_search(models, xs, lens, opts, nbest, ctc_posteriors, lm))
    except Exception as exc:  # noqa: BLE001 -- any model error of one input must not stop the others
        if xs.shape[0] == 1:
            return [exc]
        log.warning("batch of %d failed (%s: %s): decoding its utterances one by one", xs.shape[0], type(exc).__name__, exc)
    out: list[tuple[list[Hypothesis], Tensor | None] | Exception] = []
    for i in range(xs.shape[0]):
        n = int(lens[i])
        try:
            out.append(_search(models, xs[i : i + 1, :n], lens[i : i + 1], opts, nbest, ctc_posteriors, lm)[0])
        except Exception as exc:  # noqa: BLE001
            out.append(exc)
    return out
