"""Python inference API: load a model, transcribe audio.

    from asr import Speech2Text
    s2t = Speech2Text.from_pretrained("models/an4_pblstm_x4")          # a model directory (asr-export)
    print(s2t.transcribe(["tests/data/an4/wav/an4test_clstk/fjlp/an419-fjlp-b.wav"])[0].text)

``from_pretrained`` takes a model directory (:mod:`asr.models.pretrained`), a training checkpoint (``.ckpt``) or a
Hugging Face repository id (downloaded with ``huggingface_hub`` when that optional package is installed:
``pip install 'asr[hub]'``). Keyword arguments are search options (:class:`~asr.decoding.search.DecodingOptions`
fields) over the model's recorded ones (``config.yaml`` ``decoding``) over the toolkit's defaults.

Decoding is the same code as ``asr-decode``: fbank (:func:`~asr.features.fbank.compute_fbank` with the model's
front-end settings), :func:`~asr.decoding.search.decode_batch`, the tokenizer's ``decode``.

Timestamps (``Result.words`` / ``Result.segments``, seconds from the start of the audio): for a model with a CTC
branch, from the Viterbi alignment of the hypothesis to the CTC posteriors (:func:`~asr.decoding.ctc.ctc_align`):
a token spans its first to last aligned encoder frame; for a model without one (or when no CTC path has that
labelling), from attention peaks: token ``u`` starts at the arg-max frame of its attention row and ends where the
next token's (or eos's) peak is. Resolution is one encoder frame (``frame_shift_s * subsampling``, 40 ms for the
×4 pBLSTM). ``Result.timestamps`` says which was used.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from asr.decoding.ctc import ctc_align
from asr.decoding.results import attention_matrix
from asr.decoding.search import DecodingOptions, Hypothesis, beam_search, ctc_log_probs, decode_batch, resolve_options
from asr.features.audio import load_audio, resample_waveform
from asr.features.fbank import FbankOptions, compute_fbank
from asr.models.asr_model import AttentionASRModel
from asr.models.checkpoint import fbank_options, load_checkpoint
from asr.models.pretrained import is_model_dir, load_model_dir
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
    """A stretch of a hypothesis (one per input for these short-utterance models): text, span in seconds, and
    its token pieces."""

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
        With start/end seconds (module docstring); empty for an empty hypothesis.
    timestamps : str
        ``"ctc"`` (CTC alignment) or ``"attention"`` (attention peaks).
    duration : float
        Seconds of audio.
    nbest : list of Result or None
        With ``transcribe(nbest=N > 1)``: the N best hypotheses (this one first) of the beam search.
    attention : numpy array or None
        With ``return_attention=True``: ``(len(tokens) + 1, S)`` weights over encoder frames (last row: eos).
    path : str or None
        The input file, if the input was one.
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
        Not a local path, and ``huggingface_hub`` is not installed (the message says how to install it) or
        the id does not look like ``owner/name``.
    """
    p = Path(path_or_repo_id)
    if p.exists():
        return p
    repo = str(path_or_repo_id)
    if repo.count("/") != 1 or repo.startswith((".", "/")):
        raise FileNotFoundError(f"no model directory or checkpoint at {repo} (and it is not an owner/name repository id)")
    try:
        import huggingface_hub
    except ImportError as exc:
        raise FileNotFoundError(f"no local model at {repo}; loading it as a Hugging Face repository id needs huggingface_hub (pip install 'asr[hub]')") from exc
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
    """A loaded model with its tokenizer, front end and search options.

    Parameters
    ----------
    model : AttentionASRModel
    tokenizer : Tokenizer
    fbank : FbankOptions
        The front end the model was trained with.
    options : DecodingOptions
    device : str or torch.device
    """

    def __init__(self, model: AttentionASRModel, tokenizer: Tokenizer, fbank: FbankOptions, options: DecodingOptions, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer, self.fbank, self.options = tokenizer, fbank, options

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike[str], device: str | torch.device = "cpu", revision: str | None = None, cache_dir: str | None = None, **decoding_options: Any) -> "Speech2Text":
        """Load a model directory, a ``.ckpt`` training checkpoint or a Hugging Face repository id.

        ``decoding_options`` (``beam_size``, ``ctc_weight``, ``length_penalty``, ``max_len_ratio``, ``min_len``)
        override the model's recorded options (``config.yaml`` ``decoding``), which override the defaults of
        :class:`DecodingOptions` (:func:`~asr.decoding.search.resolve_options`: without a CTC branch λ is 0).

        Raises
        ------
        FileNotFoundError
            Nothing at the path and no hub download possible (:func:`resolve_model_path`).
        ValueError
            An unknown decoding option, or a model file that refuses to load (see
            :func:`~asr.models.pretrained.load_model_dir`, :func:`~asr.models.checkpoint.load_checkpoint`).
        """
        path = resolve_model_path(path_or_repo_id, revision, cache_dir)
        if path.is_file():
            model, tok, meta = load_checkpoint(path)
            fbank, recorded = fbank_options(meta), {}
        elif is_model_dir(path):
            model, tok, config = load_model_dir(path)
            fbank, recorded = config["fbank"], dict(config.get("decoding") or {})
        else:
            raise FileNotFoundError(f"{path}: neither a checkpoint file nor a model directory (config.yaml + model.safetensors)")
        options = resolve_options(model, {**recorded, **decoding_options})
        return cls(model, tok, fbank, options, device)

    # ---- input ------------------------------------------------------------------------------------------------
    def _waveform(self, x: Any, sample_rate: int | None) -> tuple[torch.Tensor, str | None]:
        if isinstance(x, (str, os.PathLike)):
            return load_audio(x, self.fbank.sample_rate), str(x)
        wav = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
        if wav.dim() != 1:
            raise ValueError(f"an in-memory waveform must be 1-D (num_samples,), got shape {tuple(wav.shape)}")
        if sample_rate is None:
            raise ValueError("transcribe() of an array needs sample_rate= (Hz)")
        if not bool(torch.isfinite(wav).all()):
            raise ValueError("the waveform contains NaN or infinite samples")
        return resample_waveform(wav, int(sample_rate), self.fbank.sample_rate), None

    # ---- output -----------------------------------------------------------------------------------------------
    def _spans(self, h: Hypothesis, ctc_logp: torch.Tensor | None, n_enc: int, duration: float) -> tuple[list[tuple[float, float]], str]:
        """Seconds ``(start, end)`` per token, and which source gave them."""
        spf = self.fbank.frame_shift_s * self.model.subsampling_factor
        frames = None
        if ctc_logp is not None:
            frames = ctc_align(ctc_logp[:n_enc], h.tokens, self.model.pad_id)
        how = "ctc"
        if frames is None:
            how = "attention"
            peaks = h.attention.float()[:, :n_enc].argmax(-1).tolist()
            if len(peaks) == len(h.tokens):
                peaks.append(n_enc - 1)
            frames = []
            for u in range(len(h.tokens)):
                a = peaks[u]
                b = max(a, peaks[u + 1] - 1)
                frames.append((a, b))
        return [(round(min(a * spf, duration), 3), round(min((b + 1) * spf, duration), 3)) for a, b in frames], how

    def _result(self, h: Hypothesis, ctc_logp: torch.Tensor | None, n_enc: int, duration: float, attention: bool, path: str | None) -> Result:
        pieces = self.tokenizer.pieces(h.tokens)
        spans, how = self._spans(h, ctc_logp, n_enc, duration)
        words = _word_spans(pieces, spans)
        text = self.tokenizer.decode(h.tokens)
        segments = [Segment(text, words[0].start, words[-1].end, pieces)] if words else []
        return Result(
            text=text, tokens=pieces, token_ids=[int(t) for t in h.tokens], score=float(h.score), norm_score=float(h.norm_score),
            words=words, segments=segments, timestamps=how, duration=round(duration, 3),
            attention=attention_matrix(h) if attention else None, path=path,
        )

    # ---- decoding ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def transcribe(self, inputs: Any, sample_rate: int | None = None, batch_size: int = 8, nbest: int = 1, return_attention: bool = False, timestamps: bool = True) -> list[Result]:
        """Transcribe audio files and/or waveforms.

        Parameters
        ----------
        inputs : path, array, or a sequence of them
            Audio files (any format libsndfile reads, resampled to the model's rate) or 1-D float waveforms in
            [-1, 1] (numpy or torch, ``(num_samples,)``) at ``sample_rate``.
        sample_rate : int, optional
            Hz of the in-memory waveforms (required for them).
        batch_size : int
            Inputs decoded together, in input order.
        nbest : int
            > 1: ``Result.nbest`` holds that many hypotheses of the beam search (needs ``beam_size`` > 1).
        return_attention : bool
            Fill ``Result.attention``.
        timestamps : bool
            Fill ``words``/``segments`` (one extra CTC pass over the encoder output for CTC models).

        Returns
        -------
        list of Result, one per input, in input order.

        Raises
        ------
        asr.features.audio.AudioError
            An input file that cannot be used (the message names it); nothing is decoded then.
        ValueError
            An array input that is not 1-D, has non-finite samples or no ``sample_rate``; an input shorter than
            one analysis window; ``nbest`` > 1 with ``beam_size`` 1.
        """
        single = isinstance(inputs, (str, os.PathLike, np.ndarray, torch.Tensor))
        items: Sequence[Any] = [inputs] if single else list(inputs)
        if nbest > 1 and self.options.beam_size < nbest:
            raise ValueError(f"nbest={nbest} needs beam_size >= {nbest} (the model decodes with beam_size={self.options.beam_size})")
        feats, paths, durations = [], [], []
        for x in items:
            wav, path = self._waveform(x, sample_rate)
            try:
                feats.append(compute_fbank(wav, self.fbank))
            except ValueError as exc:
                raise ValueError(f"{path or 'waveform'}: {exc}") from exc
            paths.append(path)
            durations.append(wav.numel() / self.fbank.sample_rate)
        results: list[Result] = []
        for i in range(0, len(feats), max(1, int(batch_size))):
            chunk = feats[i : i + batch_size]
            xs = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True).to(self.device)
            xs_lens = torch.tensor([f.shape[0] for f in chunk], device=self.device)
            if nbest > 1:
                lists = beam_search(self.model, xs, xs_lens, self.options, nbest=nbest)
                hyps = [hs[0] for hs in lists]
            else:
                lists, hyps = None, decode_batch(self.model, xs, xs_lens, self.options)
            ctc_lp, enc_lens = None, self.model.encoder.output_lengths(xs_lens).tolist()
            if timestamps and self.model.ctc is not None:
                hs, hs_lens = self.model.encode(xs, xs_lens)
                ctc_lp, enc_lens = ctc_log_probs(self.model, hs).cpu(), hs_lens.tolist()
            for j, h in enumerate(hyps):
                k = i + j
                lp = ctc_lp[j] if ctc_lp is not None else None
                r = self._result(h, lp, enc_lens[j], durations[k], return_attention, paths[k])
                if lists is not None:
                    r.nbest = [self._result(g, lp, enc_lens[j], durations[k], return_attention, paths[k]) for g in lists[j]]
                results.append(r)
        return results
