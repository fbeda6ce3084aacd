"""Python inference API: load a model, transcribe audio.

    from asr import Speech2Text
    s2t = Speech2Text.from_pretrained("models/an4_pblstm_x4")          # a model directory (asr-export)
    print(s2t.transcribe(["tests/data/an4/wav/an4test_clstk/fjlp/an419-fjlp-b.wav"])[0].text)

``from_pretrained`` takes a model directory (:mod:`asr.models.pretrained`), a training checkpoint (``.ckpt``) or a
Hugging Face repository id (downloaded with ``huggingface_hub`` when that optional package is installed:
``pip install 'asr[hub]'``). Keyword arguments are search options (:class:`~asr.decoding.search.DecodingOptions`
fields) over the model's recorded ones (``config.yaml`` ``decoding``) over the toolkit's defaults; ``transcribe``
takes them per call too.

Decoding is :class:`~asr.decoding.engine.Engine`, the engine of ``asr-decode`` and ``asr-transcribe``: fbank with the
model's front-end settings, long recordings split at pauses into segments of at most ``longform_max_s`` seconds
(6 s by default, as ``asr-decode``'s; :mod:`asr.decoding.longform`), length-sorted batches, the search, stitching.
So the three give the same words for the same recording.

Timestamps (``Result.words`` / ``Result.segments``, seconds from the start of the recording): for a model with a CTC
branch, from the Viterbi alignment of the hypothesis to the CTC posteriors (:func:`~asr.decoding.ctc.ctc_align`):
a token spans its first to last aligned encoder frame; for a model without one (or when no CTC path has that
labelling), from attention peaks: token ``u`` starts at the arg-max frame of its attention row and ends where the
next token's (or eos's) peak is (:meth:`~asr.decoding.engine.Engine.token_spans`). Resolution is one encoder frame
(``frame_shift_s * subsampling``, 40 ms for the ×4 pBLSTM). ``Result.timestamps`` says which was used.
"""

from __future__ import annotations

import logging
import os
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from asr.decoding.engine import Engine, EngineInput, InputResult, Unit
from asr.decoding.longform import SegmentOptions
from asr.decoding.results import attention_matrix
from asr.decoding.search import DecodingOptions, Hypothesis, resolve_options
from asr.features.audio import resample_waveform, waveform_to_float
from asr.features.fbank import FbankOptions
from asr.models.asr_model import AttentionASRModel
from asr.models.pretrained import load_model
from asr.text.tokenizer import Tokenizer

__all__ = ["Speech2Text", "Result", "Word", "Segment", "resolve_model_path"]

log = logging.getLogger(__name__)

WORD_BOUNDARY = "\u2581"  # sentencepiece's word-initial mark


@dataclass
class Word:
    """A word of a hypothesis with its time span in seconds (``start`` <= ``end``)."""

    text: str
    start: float
    end: float


@dataclass
class Segment:
    """A stretch of a hypothesis: text, span in seconds from the start of the recording (its first word's start to
    its last word's end), and its token pieces. One per input, or one per long-form segment of a long recording."""

    text: str
    start: float
    end: float
    tokens: list[str]


@dataclass
class Result:
    """The transcription of one input.

    Attributes
    ----------
    text : str
        The hypothesis (tokens decoded, spaces normalised).
    tokens : list of str
        Its sentencepiece pieces (no eos); ``token_ids``: their ids.
    score : float
        Total log-score (joint CTC/attention with λ > 0); ``norm_score``: the ranking score.
    words, segments : lists of :class:`Word` / :class:`Segment`
        With start/end seconds (module docstring); empty for an empty hypothesis or with ``timestamps=False``.
    timestamps : str
        ``"ctc"`` (CTC alignment), ``"attention"`` (attention peaks; also when only some segments of a long
        recording could be aligned with CTC) or ``"none"`` (``timestamps=False``).
    duration : float
        Seconds of audio.
    nbest : list of Result or None
        With ``transcribe(nbest=N > 1)``: at most N hypotheses with distinct texts (this one first) of the beam
        search; fewer when the beam finished fewer. A long recording decoded in segments gets only its best.
    attention : numpy array or None
        With ``return_attention=True``: ``(len(tokens) + 1, S)`` weights over encoder frames (last row: eos); None
        for a long recording decoded in segments.
    path : str or None
        The input file, if the input was one.
    error : str or None
        Why the input could not be transcribed (unreadable, too short, ...; the other fields are then empty), or
        with a long recording, which segments failed (the text holds the others).
    """

    text: str
    tokens: list[str]
    token_ids: list[int]
    score: float
    norm_score: float
    words: list[Word] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    timestamps: str = "attention"
    duration: float = 0.0
    nbest: list["Result"] | None = None
    attention: np.ndarray | None = field(default=None, repr=False)
    path: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (attention as nested lists when present)."""
        d = asdict(self)
        if self.attention is not None:
            d["attention"] = self.attention.tolist()
        if self.nbest is not None:
            d["nbest"] = [r.to_dict() for r in self.nbest]
        return d


def resolve_model_path(path_or_repo_id: str | os.PathLike[str], revision: str | None = None, cache_dir: str | None = None) -> Path:
    """A local model directory or checkpoint file for ``path_or_repo_id``: the path itself when it exists,
    else a Hugging Face repository id downloaded with ``huggingface_hub.snapshot_download``.

    Raises
    ------
    FileNotFoundError
        Nothing at the path, and it is not an ``owner/name`` id or ``huggingface_hub`` is not installed: the
        message says that no model directory or checkpoint exists at the path, gives the absolute path looked
        at and, for an ``owner/name`` id, how to install ``huggingface_hub``.
    """
    p = Path(path_or_repo_id)
    if p.exists():
        return p
    repo = str(path_or_repo_id)
    missing = f"no model directory or checkpoint at {repo} (looked at {p.absolute()})"
    if repo.count("/") != 1 or repo.startswith((".", "/")):
        raise FileNotFoundError(f"{missing}; it is not an owner/name repository id either")
    try:
        import huggingface_hub
    except ImportError as exc:
        raise FileNotFoundError(f"{missing}; loading {repo} as a Hugging Face repository id needs huggingface_hub (pip install 'asr[hub]')") from exc
    return Path(huggingface_hub.snapshot_download(repo_id=repo, revision=revision, cache_dir=cache_dir))


def _word_spans(pieces: list[str], spans: list[tuple[float, float]]) -> list[Word]:
    """Words from token pieces and their ``(start, end)`` seconds: a piece starting with ``▁`` starts a word; a
    word spans its pieces that hold characters (a bare ``▁`` piece only separates)."""
    words: list[Word] = []
    text, start, end = "", 0.0, 0.0
    for piece, (a, b) in zip(pieces, spans):
        if piece.startswith(WORD_BOUNDARY) and text:
            words.append(Word(text, start, end))
            text = ""
        chars = piece.replace(WORD_BOUNDARY, "")
        if chars:
            if not text:
                start = a
            text, end = text + chars, b
    if text:
        words.append(Word(text, start, end))
    return words


class Speech2Text:
    """A loaded model with its tokenizer, front end and search options, decoding through an
    :class:`~asr.decoding.engine.Engine`.

    Parameters
    ----------
    model : AttentionASRModel
    tokenizer : Tokenizer
    fbank : FbankOptions
        The front end the model was trained with.
    options : DecodingOptions
        The default search options (``transcribe`` takes others per call).
    device : str or torch.device
    longform_max_s, longform_min_s : float
        Inputs longer than ``longform_max_s`` seconds are decoded as segments of ``longform_min_s`` to
        ``longform_max_s`` seconds cut at pauses (:class:`~asr.decoding.longform.SegmentOptions`; 0: never split).
    max_frames : int
        Most padded fbank frames per batch (0: no cap).
    lm : asr.models.lm.LSTMLM, optional
        Language model for shallow fusion (weight: ``options.lm_weight``).
    threads : int or None
        torch CPU threads of this process (``torch.set_num_threads``, process-wide): ``> 0`` that many; ``0`` (default)
        auto, the usable cores not busy with other processes, or ``OMP_NUM_THREADS`` when set
        (:func:`asr.utils.threads.configure_threads`; measured on a busy 2-core machine, 2 threads ran 2.6-7.6x
        slower than 1); ``None`` leaves torch's setting as it is.
    encoder_dtype : str
        ``"float32"`` (default) or ``"bfloat16"`` (the encoder only; :class:`~asr.decoding.engine.Engine`).

    Raises
    ------
    ValueError
        ``device`` is a CUDA device and no GPU is available; a bad ``max_frames``, segment option, ``threads`` or
        ``encoder_dtype``.
    """

    def __init__(
        self, model: AttentionASRModel, tokenizer: Tokenizer, fbank: FbankOptions, options: DecodingOptions, device: str | torch.device = "cpu",
        longform_max_s: float = SegmentOptions.max_s, longform_min_s: float = SegmentOptions.min_s, max_frames: int = 20000,
        threads: int | None = 0, lm: Any = None, encoder_dtype: str = "float32",
    ) -> None:
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
                raise ValueError(f"threads must be an integer >= 0 (0 = auto) or None, got {threads!r}")
            from asr.utils.threads import configure_threads

            self.threads = configure_threads(threads)
        segments = SegmentOptions(max_s=longform_max_s, min_s=min(longform_min_s, longform_max_s))
        self.engine = Engine(model, tokenizer, fbank, options, device=device, batch_size=8, max_frames=max_frames, segments=segments, lm=lm, encoder_dtype=encoder_dtype)
        self.device, self.model = self.engine.device, self.engine.model
        self.tokenizer, self.fbank, self.options = tokenizer, fbank, options

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | os.PathLike[str], device: str | torch.device = "cpu", revision: str | None = None, cache_dir: str | None = None,
        threads: int | None = 0, lm: str | os.PathLike[str] | None = None, encoder_dtype: str = "float32", **decoding_options: Any,
    ) -> "Speech2Text":
        """Load a model directory, a ``.ckpt`` training checkpoint or a Hugging Face repository id.

        ``decoding_options`` (``beam_size``, ``ctc_weight``, ``length_penalty``, ... any
        :class:`DecodingOptions` field) override the model's recorded options (``config.yaml`` ``decoding``),
        which override the defaults of :class:`DecodingOptions` (:func:`~asr.decoding.search.resolve_options`:
        without a CTC branch λ is 0). ``threads`` as the constructor's (default auto). ``lm``: a language model file
        of ``asr-train-lm`` (the model's tokenizer) fused with ``lm_weight`` (:class:`DecodingOptions`). ``encoder_dtype`` as
        the constructor's.

        Raises
        ------
        FileNotFoundError
            Nothing at the path and no hub download possible (:func:`resolve_model_path`), or a directory that is
            not a model directory.
        ValueError
            An unknown or invalid decoding option, a CUDA ``device`` without a GPU, or a model file that refuses
            to load (see :func:`~asr.models.pretrained.load_model`).
        """
        path = resolve_model_path(path_or_repo_id, revision, cache_dir)
        resolve_options(None, decoding_options)  # a bad option fails before the model is read
        model, tok, fbank, info = load_model(path)
        options = resolve_options(model, {**info["decoding"], **decoding_options})
        lm_model = None
        if lm:
            from asr.models.lm import load_lm

            lm_model = load_lm(lm, tok)
        return cls(model, tok, fbank, options, device, threads=threads, lm=lm_model, encoder_dtype=encoder_dtype)

    # ---- input ------------------------------------------------------------------------------------------------
    def _input(self, i: int, x: Any, sample_rate: int | None) -> EngineInput:
        """The engine input of ``x`` (a path, or a 1-D waveform at ``sample_rate``, resampled to the model's rate).

        Integer arrays are scaled to [-1, 1] (:func:`~asr.features.audio.waveform_to_float`); the engine warns
        about them, and about a ``sample_rate`` below the model's, once per call (``EngineInput.int_dtype``,
        ``EngineInput.sample_rate``).

        Raises
        ------
        ValueError
            An array that is not 1-D, of an integer type without a known full scale (int64, uint16-64, bool), or
            no ``sample_rate`` for it.
        """
        if isinstance(x, (str, os.PathLike)):
            return EngineInput(str(i), path=str(x))
        wav, int_dtype = waveform_to_float(x)
        if wav.dim() != 1:
            raise ValueError(f"an in-memory waveform must be 1-D (num_samples,), got shape {tuple(wav.shape)}")
        if sample_rate is None:
            raise ValueError("transcribe() of an array needs sample_rate= (Hz)")
        if not bool(torch.isfinite(wav).all()):
            return EngineInput(str(i), error="the waveform contains NaN or infinite samples", int_dtype=int_dtype)
        wav = resample_waveform(wav, int(sample_rate), self.fbank.sample_rate)
        return EngineInput(str(i), wav=wav, sample_rate=int(sample_rate), int_dtype=int_dtype)

    # ---- output -----------------------------------------------------------------------------------------------
    def _hyp_result(self, h: Hypothesis, spans: list[tuple[float, float]] | None, how: str, duration: float, attention: bool, path: str | None) -> Result:
        """The Result of one hypothesis of an input decoded whole."""
        pieces = self.tokenizer.pieces(h.tokens)
        text = self.tokenizer.decode(h.tokens)
        words = _word_spans(pieces, spans) if spans is not None else []
        return Result(
            text=text, tokens=pieces, token_ids=[int(t) for t in h.tokens], score=float(h.score), norm_score=float(h.norm_score),
            words=words, segments=[Segment(text, words[0].start, words[-1].end, pieces)] if words else [], timestamps=how,
            duration=round(duration, 3), attention=attention_matrix(h) if attention else None, path=path,
        )

    def _result(self, res: InputResult, attention: bool, timestamps: bool) -> Result:
        """The Result of one engine result: an error, an input decoded whole, or a long recording's segments
        stitched (texts joined with a space, scores summed, ``norm_score`` their mean, words and one
        :class:`Segment` per segment with times from the start of the recording)."""
        path = res.input.path
        if res.error is not None:
            return Result("", [], [], 0.0, 0.0, timestamps="none", duration=round(res.duration, 3), path=path, error=res.error)
        units: list[Unit] = res.units
        parts = [self._hyp_result(u.hyp, u.spans, u.timestamps if timestamps else "none", res.duration, attention and not res.segmented, path) for u in units if u.hyp is not None]
        failed = [u for u in units if u.hyp is None]
        error = "; ".join(f"{u.unit_id if res.segmented else 'decoding'}: {u.error}" for u in failed) or None
        if not res.segmented:
            if not parts:
                return Result("", [], [], 0.0, 0.0, timestamps="none", duration=round(res.duration, 3), path=path, error=error)
            r = parts[0]
            if units[0].nbest is not None:
                spans = units[0].nbest_spans or [None] * len(units[0].nbest)
                r.nbest = [self._hyp_result(g, sp, r.timestamps, res.duration, attention, path) for g, sp in zip(units[0].nbest, spans)]
            return r
        hows = {p.timestamps for p in parts}
        return Result(
            text=" ".join(p.text for p in parts if p.text), tokens=[t for p in parts for t in p.tokens], token_ids=[t for p in parts for t in p.token_ids],
            score=sum(p.score for p in parts), norm_score=sum(p.norm_score for p in parts) / len(parts) if parts else 0.0,
            words=[w for p in parts for w in p.words], segments=[s for p in parts for s in p.segments],
            timestamps=hows.pop() if len(hows) == 1 else "attention" if parts else "none", duration=round(res.duration, 3), path=path, error=error,
            nbest=[] if units[0].nbest is not None else None,
        )

    # ---- decoding ---------------------------------------------------------------------------------------------
    def stream(
        self, inputs: Any, sample_rate: int | None = None, batch_size: int = 8, nbest: int = 1, return_attention: bool = False, timestamps: bool = True,
        **decoding_options: Any,
    ) -> Iterator[Result]:
        """:meth:`transcribe` as an iterator: the Results come in input order as their chunk of inputs is decoded
        (:class:`~asr.decoding.engine.Engine`: bounded memory). Arguments are checked at the call."""
        single = isinstance(inputs, (str, os.PathLike, np.ndarray, torch.Tensor))
        items: Sequence[Any] = [inputs] if single else list(inputs)
        opts = resolve_options(None, {**asdict(self.options), **decoding_options}) if decoding_options else self.options
        engine_inputs = [self._input(i, x, sample_rate) for i, x in enumerate(items)]
        results = self.engine.run(engine_inputs, opts, nbest=nbest, timestamps=timestamps, batch_size=batch_size)
        return self._results(results, nbest, return_attention, timestamps)

    def _results(self, results: Iterator[InputResult], nbest: int, attention: bool, timestamps: bool) -> Iterator[Result]:
        """The generator of :meth:`stream`."""
        for res in results:
            r = self._result(res, attention, timestamps)
            if r.nbest == []:  # a long recording decoded in segments: only its best
                r.nbest = [dataclasses.replace(r, nbest=None)]
            yield r

    @torch.no_grad()
    def transcribe(
        self, inputs: Any, sample_rate: int | None = None, batch_size: int = 8, nbest: int = 1, return_attention: bool = False, timestamps: bool = True,
        **decoding_options: Any,
    ) -> list[Result]:
        """Transcribe audio files and/or waveforms.

        Parameters
        ----------
        inputs : path, array, or a sequence of them
            Audio files (any format libsndfile reads, resampled to the model's rate) or 1-D float waveforms in
            [-1, 1] (numpy or torch, ``(num_samples,)``) at ``sample_rate``; int8/int16/int32/uint8 arrays are
            scaled to [-1, 1] by their full scale with an :class:`~asr.features.audio.AudioInputWarning` (once per
            call, with the count), other integer types refused (ValueError). Audio at a lower rate than the model's
            (8 kHz to a 16 kHz model) is decoded, with an ``AudioInputWarning`` once per call: its missing high
            band degrades recognition badly. Silence and steady noise give an empty text
            (``DecodingOptions.no_speech_db``). Any length: an input longer than
            ``longform_max_s`` is decoded in segments (module docstring).
        sample_rate : int, optional
            Hz of the in-memory waveforms (required for them).
        batch_size : int
            Most inputs (or segments) decoded together; they are grouped by length.
        nbest : int
            > 1: ``Result.nbest`` holds up to that many hypotheses with distinct texts (needs ``beam_size`` >= ``nbest``).
        return_attention : bool
            Fill ``Result.attention``.
        timestamps : bool
            Fill ``words``/``segments`` (one extra CTC pass over the encoder output per batch for CTC models);
            False leaves them empty (``Result.timestamps`` is ``"none"``).
        **decoding_options
            Search options for this call (:class:`DecodingOptions` fields, e.g. ``beam_size=5``) over this
            object's ``options``. ``beam_size=1`` is a greedy search: attention-only when ``ctc_weight`` is 0,
            CTC best path when it is 1, and in between a joint CTC/attention search keeping one hypothesis
            (:func:`~asr.decoding.search.decode_batch`); pass ``ctc_weight=0`` for plain attention greedy.

        Returns
        -------
        list of Result, one per input, in input order. An input that cannot be transcribed (missing, not audio,
        NaN samples, shorter than the model accepts: ``too short: 0.030 s < minimum 0.095 s``) gets a Result
        with ``error`` set and empty text; the others are transcribed all the same.

        Raises
        ------
        ValueError
            An array input that is not 1-D, has no ``sample_rate`` or an integer type other than int8/int16/int32/uint8; ``batch_size`` not an integer >= 1;
            ``nbest`` > 1 with ``beam_size`` < ``nbest``; an unknown or invalid decoding option, or ``ctc_weight``
            > 0 for a model without a CTC branch.
        """
        return list(self.stream(inputs, sample_rate, batch_size, nbest, return_attention, timestamps, **decoding_options))
