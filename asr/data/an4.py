"""CMU AN4 corpus preparation into Kaldi/ESPnet data directories (after ESPnet ``egs/an4/asr1``).

Expected corpus layout (the ``cmusphinx/an4`` repository, or the official ``an4_sphere.tar.gz``
extracted by ``recipes/an4/local/download_an4.sh``)::

    <corpus_dir>/etc/an4_train.fileids          an4_clstk/fash/an251-fash-b
    <corpus_dir>/etc/an4_train.transcription    <s> YES </s> (an251-fash-b)
    <corpus_dir>/etc/an4_test.fileids           an4test_clstk/fcaw/an406-fcaw-b
    <corpus_dir>/etc/an4_test.transcription     RUBOUT G M E F THREE NINE (an406-fcaw-b)
    <corpus_dir>/wav/an4_clstk/<spk>/<name>.wav (or .sph, NIST SPHERE)

Output (``out_dir``): ``train_nodev``, ``train_dev`` and ``test`` data directories (see
:mod:`asr.data.datadir`), each with a ``bad_utts.tsv`` report. Like ESPnet's recipe, ``train_dev`` is the
first ``dev_size`` (by utterance id) good training utterances and ``train_nodev`` the rest; with the full
corpus that is 848 / 100, and 130 test utterances.

Run as ``asr-prepare-an4 corpus_dir=/path/to/an4 out_dir=data dev_size=100 max_bad_fraction=0.05``.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from asr.data.datadir import Utterance, write_data_dir
from asr.features.audio import AudioError, audio_duration

__all__ = [
    "BadUtterance",
    "DataPrepError",
    "SplitReport",
    "prepare_an4",
    "main",
    "make_utt_id",
    "normalize_transcript",
    "parse_transcription_line",
]

log = logging.getLogger(__name__)

#: Audio extensions tried, in order, for each fileid (``.wav``: cmusphinx/an4; ``.sph``: CMU tarball).
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".sph")
#: Tokens removed from transcripts (sentence boundaries of the Sphinx train transcription).
_DROP_TOKENS = frozenset({"<s>", "</s>"})
_TRANSCRIPT_RE = re.compile(r"^(?P<text>.*?)\s*\((?P<name>[^()\s]+)\)\s*$")

# Reason categories (keys of SplitReport.reasons; first column of the detail in bad_utts.tsv).
MISSING_AUDIO = "missing audio"
UNREADABLE_AUDIO = "unreadable audio"
EMPTY_AUDIO = "empty audio"
EMPTY_TRANSCRIPT = "empty transcript"
NO_TRANSCRIPT = "no transcript"
NO_FILEID = "no fileid"
MALFORMED_TRANSCRIPT = "malformed transcript line"
MALFORMED_FILEID = "malformed fileid line"
DUPLICATE_ID = "duplicate id"
NOT_UTF8 = "not UTF-8"


class DataPrepError(RuntimeError):
    """Corpus preparation failed: corpus files missing, or too many bad utterances."""


@dataclass(frozen=True)
class BadUtterance:
    """One utterance (or corpus line) that was skipped.

    Attributes
    ----------
    utt_id : str
        The utterance id it would have had (or the raw line content when it could not be parsed).
    file : str
        The file showing the problem (audio path, or ``<list file>:<line>``).
    reason : str
        Category, one of the module constants (``"missing audio"``, ``"empty transcript"``, ...).
    detail : str
        Human-readable explanation.
    """

    utt_id: str
    file: str
    reason: str
    detail: str = ""


@dataclass
class SplitReport:
    """What happened to one output split.

    Attributes
    ----------
    split : str
        ``"train_nodev"``, ``"train_dev"`` or ``"test"``.
    n_kept : int
        Utterances written to the split's data directory.
    n_skipped : int
        Bad utterances reported in the split's ``bad_utts.tsv``. Bad *training* utterances are reported
        under ``train_nodev`` (``train_dev`` is carved out of good utterances only, so its report is empty).
    reasons : collections.Counter
        ``n_skipped`` broken down by reason category.
    bad : list of BadUtterance
        The skipped utterances.
    report_path : pathlib.Path or None
        The ``bad_utts.tsv`` written for the split.
    """

    split: str
    n_kept: int = 0
    n_skipped: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    bad: list[BadUtterance] = field(default_factory=list)
    report_path: Path | None = None


def normalize_transcript(text: str) -> str:
    """Drop ``<s>``/``</s>`` tokens and collapse whitespace; case is kept (AN4 is upper case).

    Parameters
    ----------
    text : str
        Transcript without its trailing ``(utt-name)``.

    Returns
    -------
    str
        e.g. ``"<s>  YES </s>"`` -> ``"YES"``.
    """
    return " ".join(t for t in text.split() if t not in _DROP_TOKENS)


def make_utt_id(name: str, speaker: str) -> str:
    """Speaker-prefixed utterance id: ``an251-fash-b`` of speaker ``fash`` -> ``fash-an251-b``.

    The ``-<speaker>`` field is removed from the name and the speaker put first, so that Kaldi's sort
    order of ``utt2spk`` and ``spk2utt`` agree. A name without that field is just prefixed.

    Parameters
    ----------
    name : str
        File stem, ``<prefix>-<spk>-<suffix>``.
    speaker : str
        Speaker id (the audio file's parent directory).

    Returns
    -------
    str
    """
    parts = name.split("-")
    if speaker in parts[1:]:
        del parts[parts.index(speaker, 1)]
    return "-".join([speaker, *parts])


def _speaker_from_name(name: str) -> str | None:
    parts = name.split("-")
    return parts[1] if len(parts) >= 3 else None


@dataclass
class _Entry:
    name: str
    speaker: str
    rel: str
    where: str  # "<fileids>:<line>"


def _numbered_lines(path: Path, bad: list[BadUtterance]):
    """Yield ``("<file>:<line>", stripped line)`` for every non-empty line of a UTF-8 text file.

    A line that is not valid UTF-8 is not yielded but appended to ``bad`` (reason ``NOT_UTF8``), so one
    stray byte costs one utterance, not the whole preparation. ``\r\n`` line ends are accepted.
    """
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            shown = raw.decode("utf-8", errors="backslashreplace").strip()
            bad.append(
                BadUtterance(shown, where, NOT_UTF8, f"byte {raw[exc.start]:#04x} at column {exc.start + 1} is not UTF-8")
            )
            continue
        if line:
            yield where, line


def parse_transcription_line(line: str) -> tuple[str, str] | None:
    """Parse one AN4 transcription line ``<s> TEXT </s> (utt-name)``.

    Parameters
    ----------
    line : str
        One line (surrounding whitespace, trailing spaces and tabs allowed).

    Returns
    -------
    (name, text) or None
        The utterance name (no whitespace or parentheses) and the normalised transcript (see
        :func:`normalize_transcript`; may be empty); ``None`` when the line does not end in ``(name)``.
        Never raises for any ``str``.
    """
    m = _TRANSCRIPT_RE.match(line.strip())
    if m is None:
        return None
    return m["name"], normalize_transcript(m["text"])


def _read_fileids(path: Path, bad: list[BadUtterance]) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    for where, line in _numbered_lines(path, bad):
        parts = [p for p in line.split("/") if p]
        if len(parts) < 2 or any(c.isspace() for c in line) or any(p in (".", "..") for p in parts):
            bad.append(BadUtterance(line, where, MALFORMED_FILEID, f"expected '<dir>/<spk>/<name>', got {line!r}"))
            continue
        name, speaker = parts[-1], parts[-2]
        for ext in AUDIO_EXTENSIONS:  # tolerate fileids that carry an extension
            if name.endswith(ext):
                name = name[: -len(ext)]
        rel = "/".join([*parts[:-1], name])
        if name in entries:
            bad.append(
                BadUtterance(
                    make_utt_id(name, speaker), where, DUPLICATE_ID, f"{name!r} already listed at {entries[name].where}"
                )
            )
            continue
        entries[name] = _Entry(name, speaker, rel, where)
    return entries


def _read_transcription(path: Path, bad: list[BadUtterance]) -> dict[str, tuple[str, str]]:
    """name -> (normalized text, "<file>:<line>")."""
    texts: dict[str, tuple[str, str]] = {}
    for where, line in _numbered_lines(path, bad):
        parsed = parse_transcription_line(line)
        if parsed is None:
            bad.append(
                BadUtterance(line, where, MALFORMED_TRANSCRIPT, f"expected '<text> (<utt-name>)', got {line!r}")
            )
            continue
        name, text = parsed
        if name in texts:
            spk = _speaker_from_name(name)
            uid = make_utt_id(name, spk) if spk else name
            bad.append(BadUtterance(uid, where, DUPLICATE_ID, f"{name!r} already transcribed at {texts[name][1]}"))
            continue
        texts[name] = (text, where)
    return texts


def _find_audio(wav_dir: Path, rel: str) -> Path | None:
    for ext in AUDIO_EXTENSIONS:
        p = wav_dir / (rel + ext)
        if p.is_file():
            return p
    return None


def _collect_part(
    corpus: Path, part: str, progress: bool
) -> tuple[list[Utterance], list[BadUtterance], int]:
    """Parse one corpus part ('train' or 'test'); returns (good utterances, bad, number of candidates)."""
    etc, wav_dir = corpus / "etc", corpus / "wav"
    fileids_path = etc / f"an4_{part}.fileids"
    trans_path = etc / f"an4_{part}.transcription"
    bad: list[BadUtterance] = []
    entries = _read_fileids(fileids_path, bad)
    texts = _read_transcription(trans_path, bad)

    for name in sorted(texts.keys() - entries.keys()):
        spk = _speaker_from_name(name)
        bad.append(
            BadUtterance(
                make_utt_id(name, spk) if spk else name,
                texts[name][1],
                NO_FILEID,
                f"transcript for {name!r} but no such entry in {fileids_path.name}",
            )
        )

    good: list[Utterance] = []
    seen_ids: dict[str, str] = {}
    items = list(entries.values())
    for e in tqdm(items, desc=f"an4 {part}", unit="utt", disable=not progress, leave=False):
        utt_id = make_utt_id(e.name, e.speaker)
        if e.name not in texts:
            bad.append(BadUtterance(utt_id, e.where, NO_TRANSCRIPT, f"no line for {e.name!r} in {trans_path.name}"))
            continue
        text, text_where = texts[e.name]
        if not text:
            bad.append(BadUtterance(utt_id, text_where, EMPTY_TRANSCRIPT, "transcript is empty"))
            continue
        audio = _find_audio(wav_dir, e.rel)
        if audio is None:
            tried = " / ".join(str(wav_dir / (e.rel + ext)) for ext in AUDIO_EXTENSIONS)
            bad.append(BadUtterance(utt_id, str(wav_dir / e.rel), MISSING_AUDIO, f"neither {tried} exists"))
            continue
        try:
            dur = audio_duration(audio)
        except AudioError as exc:
            bad.append(BadUtterance(utt_id, str(audio), UNREADABLE_AUDIO, exc.reason))
            continue
        if dur <= 0.0:
            bad.append(BadUtterance(utt_id, str(audio), EMPTY_AUDIO, "audio has no samples"))
            continue
        if utt_id in seen_ids:  # two different names mapping to the same id
            bad.append(BadUtterance(utt_id, e.where, DUPLICATE_ID, f"id {utt_id!r} already used by {seen_ids[utt_id]}"))
            continue
        seen_ids[utt_id] = e.where
        good.append(Utterance(utt_id=utt_id, wav=str(audio.absolute()), text=text, speaker=e.speaker, duration=dur))

    n_candidates = len(good) + len(bad)
    return good, bad, n_candidates


def _write_bad(path: Path, bad: Sequence[BadUtterance]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")

    def clean(s: str) -> str:
        return " ".join(s.split())  # no tabs/newlines inside a TSV cell

    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
        w.writerow(["utt_id", "file", "reason", "detail"])
        for b in bad:
            w.writerow([clean(b.utt_id), clean(b.file), b.reason, clean(b.detail)])
    os.replace(tmp, path)


def _fmt_reasons(reasons: Counter[str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))


def prepare_an4(
    corpus_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    dev_size: int = 100,
    max_bad_fraction: float = 0.05,
    *,
    progress: bool = True,
) -> dict[str, SplitReport]:
    """Prepare AN4 as ``train_nodev`` / ``train_dev`` / ``test`` Kaldi data directories.

    Follows ESPnet ``egs/an4/asr1/local/data_prep.py`` + ``utils/subset_data_dir.sh --first``: utterance id
    ``<spk>-<name without -<spk>>`` (``an251-fash-b`` -> ``fash-an251-b``), transcript without
    ``<s>``/``</s>`` and with collapsed whitespace (upper case kept), absolute audio paths, durations from
    the audio headers (no decoding). Good training utterances are sorted by id (byte order); the first
    ``dev_size`` form ``train_dev`` and the rest ``train_nodev``; ``test`` has every good test utterance.

    Nothing is dropped silently: a fileid whose audio is missing (neither ``.wav`` nor ``.sph``), audio
    that libsndfile cannot read or that has no samples, an empty transcript, a fileid without transcript
    or a transcript without fileid, a malformed line (including a fileid with ``.``/``..`` components), a
    line that is not UTF-8, and a duplicate id are each written to
    ``out_dir/<split>/bad_utts.tsv`` (tab-separated; header ``utt_id file reason detail``), counted and
    logged per corpus part, e.g. ``train: 947 kept, 1 skipped (missing audio: 1)``. Bad training
    utterances are reported in ``train_nodev/bad_utts.tsv``.

    Parameters
    ----------
    corpus_dir : str or os.PathLike
        The AN4 root, holding ``etc/`` and ``wav/``.
    out_dir : str or os.PathLike
        Where the three data directories are created (existing data files in them are overwritten).
    dev_size : int, default 100
        Number of training utterances held out as ``train_dev``.
    max_bad_fraction : float, default 0.05
        Largest tolerated fraction of skipped entries per corpus part (train or test).
    progress : bool, default True
        Show a tqdm progress bar over utterances.

    Returns
    -------
    dict of str to SplitReport
        Keys ``"train_nodev"``, ``"train_dev"``, ``"test"``.

    Raises
    ------
    DataPrepError
        If ``corpus_dir`` or one of its ``etc/an4_{train,test}.{fileids,transcription}`` files or ``wav/``
        is missing; if ``dev_size`` leaves no training utterance for ``train_nodev``; or if a part's
        skipped fraction exceeds ``max_bad_fraction`` (raised after all data dirs and reports are written;
        the message names the part, the counts and the report path).
    ValueError
        If ``dev_size < 0`` or ``max_bad_fraction`` is not in ``[0, 1]``.
    """
    if dev_size < 0:
        raise ValueError(f"dev_size must be >= 0, got {dev_size}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    corpus = Path(corpus_dir)
    out = Path(out_dir)
    if not corpus.is_dir():
        raise DataPrepError(
            f"AN4 corpus directory not found: {corpus} (download it with recipes/an4/local/download_an4.sh)"
        )
    required = [corpus / "wav"] + [
        corpus / "etc" / f"an4_{p}.{k}" for p in ("train", "test") for k in ("fileids", "transcription")
    ]
    missing = [str(p) for p in required if not p.exists()]
    if missing:
        raise DataPrepError(f"{corpus} does not look like AN4; missing: {', '.join(missing)}")

    train_good, train_bad, train_n = _collect_part(corpus, "train", progress)
    test_good, test_bad, test_n = _collect_part(corpus, "test", progress)

    train_good.sort(key=lambda u: u.utt_id.encode("utf-8"))
    if train_good and dev_size >= len(train_good):
        raise DataPrepError(
            f"dev_size={dev_size} leaves no utterance for train_nodev ({len(train_good)} good training utterances)"
        )
    splits = {
        "train_nodev": (train_good[dev_size:], train_bad),
        "train_dev": (train_good[:dev_size], []),
        "test": (test_good, test_bad),
    }
    reports: dict[str, SplitReport] = {}
    for name, (good, bad) in splits.items():
        split_dir = write_data_dir(good, out / name)
        report_path = split_dir / "bad_utts.tsv"
        _write_bad(report_path, bad)
        reports[name] = SplitReport(
            split=name,
            n_kept=len(good),
            n_skipped=len(bad),
            reasons=Counter(b.reason for b in bad),
            bad=list(bad),
            report_path=report_path,
        )

    failures: list[str] = []
    for part, good, bad, n, split in (
        ("train", train_good, train_bad, train_n, "train_nodev"),
        ("test", test_good, test_bad, test_n, "test"),
    ):
        rep = reports[split]
        msg = f"{part}: {len(good)} kept, {len(bad)} skipped"
        if bad:
            msg += f" ({_fmt_reasons(rep.reasons)}); see {rep.report_path}"
        if bad:
            log.warning(msg)
            for b in bad[:10]:
                log.warning("  skipped %s (%s): %s [%s]", b.utt_id, b.reason, b.detail, b.file)
            if len(bad) > 10:
                log.warning("  ... %d more in %s", len(bad) - 10, rep.report_path)
        else:
            log.info(msg)
        frac = len(bad) / n if n else 0.0
        if frac > max_bad_fraction:
            failures.append(
                f"{part}: {len(bad)} of {n} entries skipped ({frac:.1%} > max_bad_fraction={max_bad_fraction:g}); "
                f"see {rep.report_path}"
            )
    log.info(
        "wrote %s: train_nodev %d, train_dev %d, test %d utterances",
        out,
        reports["train_nodev"].n_kept,
        reports["train_dev"].n_kept,
        reports["test"].n_kept,
    )
    if failures:
        raise DataPrepError("too many bad utterances in AN4 — " + "; ".join(failures))
    return reports


_USAGE = """usage: asr-prepare-an4 corpus_dir=PATH [out_dir=data] [dev_size=100] [max_bad_fraction=0.05] [progress=true]

Prepare the CMU AN4 corpus as Kaldi/ESPnet data directories out_dir/{train_nodev,train_dev,test}.
Arguments are Hydra-style key=value overrides."""

_DEFAULTS: dict[str, object] = {
    "corpus_dir": None,
    "out_dir": "data",
    "dev_size": 100,
    "max_bad_fraction": 0.05,
    "progress": True,
}


def _parse_overrides(argv: Sequence[str]) -> dict[str, object]:
    from omegaconf import OmegaConf

    tokens = []
    for tok in argv:
        if "=" not in tok:
            raise ValueError(f"expected key=value, got {tok!r}")
        tokens.append(tok.lstrip("+"))
    cfg = OmegaConf.to_container(OmegaConf.from_dotlist(tokens))
    assert isinstance(cfg, dict)
    unknown = set(cfg) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown key(s): {', '.join(sorted(map(str, unknown)))}; known: {', '.join(_DEFAULTS)}")
    params = {**_DEFAULTS, **cfg}
    if params["corpus_dir"] in (None, ""):
        raise ValueError("corpus_dir=PATH is required")
    try:
        params["dev_size"] = int(params["dev_size"])  # type: ignore[arg-type]
        params["max_bad_fraction"] = float(params["max_bad_fraction"])  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad numeric value: {exc}") from exc
    if not isinstance(params["progress"], bool):
        raise ValueError(f"progress must be true or false, got {params['progress']!r}")
    return params


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``asr-prepare-an4`` (Hydra-style ``key=value`` arguments).

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``), e.g. ``["corpus_dir=/data/an4", "out_dir=data", "dev_size=100"]``.

    Returns
    -------
    int
        0 on success, 1 on a preparation error (missing corpus, too many bad utterances), 2 on bad usage.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in args):
        print(_USAGE)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        params = _parse_overrides(args)
    except ValueError as exc:
        print(f"asr-prepare-an4: error: {exc}\n{_USAGE}", file=sys.stderr)
        return 2
    try:
        prepare_an4(
            str(params["corpus_dir"]),
            str(params["out_dir"]),
            dev_size=int(params["dev_size"]),  # type: ignore[call-overload]
            max_bad_fraction=float(params["max_bad_fraction"]),  # type: ignore[arg-type]
            progress=bool(params["progress"]),
        )
    except (DataPrepError, ValueError) as exc:
        print(f"asr-prepare-an4: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
