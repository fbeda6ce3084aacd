"""``asr-plot``: attention alignment plots of decode directories.

Usage::

    asr-plot decode_dir=exp/an4/decode_test                       # worst 5 -> <decode_dir>/plots/<utt>.png
    asr-plot decode_dir=exp/an4/decode_test worst_n=0 'utt_ids=[fcaw-an406-b]' first_n=3
    asr-plot 'compare_dirs=[exp/dot/decode_test,exp/loc/decode_test]' \\
             'compare_labels=[dot,location]' compare_utt=fcaw-an406-b   # -> <out_dir>/compare_<utt>.png
    asr-plot decode_dir=exp/an4_transformer_ctc/decode_test heads=true feats=dump/test/feats.pt
             # Transformer decoder: also <utt>_heads.png, every layer's and head's cross-attention

A decode directory (written by ``asr-decode``) holds ``results.jsonl`` (``utt_id``, ``ref``,
``hyp``, ``tokens``, ...), ``attention.npz`` (utt id -> float32 ``(len(tokens) + 1, enc_frames)``,
last row = the step that emitted ``<eos>``) and ``meta.json`` (``frame_shift_s``, ``subsampling``,
``attention``). Encoder frame ``s`` starts at ``s * frame_shift_s * subsampling`` seconds.

Config: ``conf/plot.yaml``; Hydra creates no ``outputs/`` folder and does not change the cwd.

The plot folder records the files ``asr-plot`` wrote (``<out_dir>/.asr-owned.json``, :mod:`asr.utils.owned`): runs
add to it (a plot of the same name is replaced, nothing is removed), and ``asr-decode`` removes those files, and
only those, when it re-decodes the folder. A non-empty ``out_dir`` without that manifest is refused unless
``overwrite=true``. Every error is one line ``asr-plot: <path>: <reason>`` on stderr, exit status 2.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from asr.decoding.longform import expand_segments
from asr.decoding.results import attention_ids, read_attention, read_meta, read_results
from asr.metrics.wer import normalize_whitespace, per_utterance
from asr.utils.owned import OwnedOutput, check_output_dir
from asr.utils.paths import CONF_DIR
from asr.viz.alignment import plot_alignment, plot_comparison, utterance_title

__all__ = ["PLOT_TOOL", "read_meta", "select_utts", "plot_decode_dir", "choose_compare_utt", "plot_compare", "safe_file_stem", "main"]

log = logging.getLogger(__name__)

EOS = "<eos>"
#: The tool name in the ownership manifest of ``asr-plot``'s output folder (:mod:`asr.utils.owned`).
PLOT_TOOL = "asr-plot"


def _seconds_per_frame(meta: dict[str, Any]) -> float:
    return float(meta["frame_shift_s"]) * int(meta["subsampling"])


def _word_stats(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    stats = per_utterance([r["ref"] for r in rows], [r["hyp"] for r in rows], [r["utt_id"] for r in rows])
    return {s["utt_id"]: s for s in stats}


def select_utts(
    rows: Sequence[dict[str, Any]],
    utt_ids: Sequence[str] = (),
    worst_n: int = 5,
    first_n: int = 0,
) -> list[str]:
    """Utterances to plot: ``utt_ids``, then the first ``first_n``, then the ``worst_n`` with most
    word errors (ties broken by utt id); duplicates dropped, order kept.

    Raises
    ------
    ValueError
        If an id in ``utt_ids`` is not in ``rows``.
    """
    known = {r["utt_id"] for r in rows}
    unknown = [u for u in utt_ids if u not in known]
    if unknown:
        raise ValueError(f"utterance id(s) not in results.jsonl: {unknown}")
    chosen = list(utt_ids) + [r["utt_id"] for r in rows[: max(first_n, 0)]]
    if worst_n > 0:
        stats = _word_stats(rows)
        ranked = sorted(stats.values(), key=lambda s: (-s["errors"], s["utt_id"]))
        chosen += [s["utt_id"] for s in ranked[:worst_n]]
    return list(dict.fromkeys(chosen))


def _attention(utt_id: str, row: dict[str, Any], decode_dir: Path) -> tuple[np.ndarray, list[str]]:
    w = np.asarray(read_attention(decode_dir, [utt_id])[utt_id])
    tokens = [str(t) for t in row.get("tokens", [])] + [EOS]
    if w.ndim != 2 or w.shape[0] != len(tokens):
        raise ValueError(
            f"{decode_dir}: attention for {utt_id!r} has shape {w.shape}, expected "
            f"(len(tokens) + 1 = {len(tokens)}, enc_frames)"
        )
    return w, tokens


_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def safe_file_stem(utt_id: str) -> str:
    """A file name stem for an utterance id that cannot leave the output folder.

    Ids made only of ``[A-Za-z0-9._-]`` that do not start with ``.`` (every Kaldi-style id such as
    ``fcaw-an406-b``) are kept as they are. Any other id (with ``/``, ``\\``, ``..``, a leading ``.``,
    spaces, non-ASCII, or empty) has each other character replaced by ``_``, a leading ``.`` by ``_``,
    and gets ``-<8 hex digits of its SHA-1>`` appended, so distinct ids keep distinct files; the result is
    at most 100 characters. ``"../../etc/x"`` -> ``"_.._.._etc_x-<hash>"``.
    """
    if utt_id and utt_id[0] != "." and len(utt_id) <= 100 and all(c in _SAFE_CHARS for c in utt_id):
        return utt_id
    import hashlib

    clean = "".join(c if c in _SAFE_CHARS else "_" for c in utt_id)[:80]
    if clean.startswith("."):
        clean = "_" + clean[1:]
    return f"{clean}-{hashlib.sha1(utt_id.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def _title(stat: dict[str, Any]) -> str:
    wer = None if stat["wer"] is None else 100.0 * stat["wer"]
    return utterance_title(stat["utt_id"], stat["ref"], stat["hyp"], wer)


def plot_decode_dir(
    decode_dir: str | Path,
    utt_ids: Sequence[str] = (),
    worst_n: int = 5,
    out_dir: str | Path | None = None,
    first_n: int = 0,
) -> list[Path]:
    """Write one alignment PNG per selected utterance of a decode directory.

    Parameters
    ----------
    decode_dir : str or Path
        Folder with ``results.jsonl``, ``attention.npz`` and ``meta.json``.
    utt_ids : sequence of str
        Utterances to plot in any case.
    worst_n : int
        Also plot the ``worst_n`` utterances with the most word errors (ties by utt id).
    out_dir : str or Path, optional
        Output folder (created); default ``<decode_dir>/plots``.
    first_n : int
        Also plot the first ``first_n`` utterances of ``results.jsonl``.

    Returns
    -------
    list of Path
        ``<out_dir>/<utt_id>.png`` per utterance (per segment, ``<utt_id>-seg0000.png``, ..., for a recording
        decoded in segments, whose ``utt_ids`` are then the segment ids), in selection order (see `select_utts`); an id that is
        not a plain file name (``/``, ``..``, ...) is made one by `safe_file_stem`, so nothing is written
        outside ``out_dir``.

    Raises
    ------
    FileNotFoundError
        If ``results.jsonl`` or ``attention.npz`` is missing.
    ValueError
        Unknown ``utt_ids``, missing attention, or attention shape ``!= (len(tokens) + 1, S)``.
    """
    d = Path(decode_dir)
    out = Path(out_dir) if out_dir is not None else d / "plots"
    rows = expand_segments(read_results(d))  # a long-form recording is plotted per segment
    by_id = {r["utt_id"]: r for r in rows}
    meta = read_meta(d)
    selected = select_utts(rows, utt_ids, worst_n, first_n)
    if not selected:
        return []
    stats = _word_stats([by_id[u] for u in selected])
    # a windowed decode (meta.json records every search option) gets its windows outlined
    back, ahead = int(meta.get("att_window_back", -1)), int(meta.get("att_window_ahead", -1))
    window = (back, ahead) if back >= 0 and ahead >= 0 else None
    paths = []
    for u in selected:
        w, tokens = _attention(u, by_id[u], d)
        paths.append(
            plot_alignment(
                w,
                tokens,
                out / f"{safe_file_stem(u)}.png",
                frame_shift_s=float(meta["frame_shift_s"]),
                subsampling=int(meta["subsampling"]),
                title=_title(stats[u]),
                window=window,
            )
        )
    return paths


def plot_head_grids(
    decode_dir: str | Path,
    utt_ids: Sequence[str],
    feats: str | Path | None = None,
    out_dir: str | Path | None = None,
    ckpt: str | Path | None = None,
) -> list[Path]:
    """Per-layer, per-head cross-attention grids of a Transformer decoder for decoded utterances.

    The weights are recomputed: the decode's checkpoint (``meta.json`` ``checkpoint``) is loaded with
    `asr.models.checkpoint.load_checkpoint`, the utterance's features are encoded and
    ``model.decoder.cross_attention`` runs teacher-forced on ``[sos] + tokens`` of ``results.jsonl``, so row
    ``u`` is the step that emitted token ``u`` (the last row emitted ``<eos>``), as in ``attention.npz``.

    Parameters
    ----------
    decode_dir : str or Path
        A decode directory (``results.jsonl``, ``meta.json``).
    utt_ids : sequence of str
        Utterances to plot.
    feats : str or Path, optional
        fbank dump ``feats.pt`` (utt id -> ``(T, F)``) of the decoded data, e.g. ``dump/test/feats.pt``;
        default ``<dump_dir>/feats.pt`` when ``meta.json`` names a ``dump_dir``, else computed from the audio of the
        decoded ``data_dir``.
    out_dir : str or Path, optional
        Default ``<decode_dir>/plots``; writes ``<out_dir>/<utt_id>_heads.png`` (id through `safe_file_stem`).
    ckpt : str or Path, optional
        Checkpoint to use instead of ``meta.json``'s.

    Returns
    -------
    list of Path
        The PNGs, in ``utt_ids`` order.

    Raises
    ------
    ValueError
        No checkpoint or features known, a decoder without ``cross_attention`` (not a Transformer), or an
        utterance missing from ``results.jsonl`` or the features.
    FileNotFoundError
        Missing checkpoint or feature file.
    """
    import torch

    from asr.models.checkpoint import load_checkpoint
    from asr.viz.alignment import plot_head_grid

    d = Path(decode_dir)
    meta = read_meta(d)
    ckpt = ckpt if ckpt is not None else meta.get("checkpoint")
    if not ckpt:
        raise ValueError(f"{d / 'meta.json'} names no checkpoint; pass ckpt=")
    if feats is None and meta.get("dump_dir"):
        feats = Path(meta["dump_dir"]) / "feats.pt"
    if feats is None and not meta.get("data_dir"):
        raise ValueError("heads=true needs the decoded data's fbank: pass feats=<dump_dir>/feats.pt, or decode a data_dir")
    model, tok, ck_meta = load_checkpoint(str(ckpt))
    if not hasattr(model.decoder, "cross_attention"):
        raise ValueError(f"{ckpt}: {type(model.decoder).__name__} has no multi-head cross-attention; heads=true needs a Transformer decoder")
    by_id = {r["utt_id"]: r for r in read_results(d)}
    if feats is not None:
        if not Path(feats).is_file():
            raise FileNotFoundError(f"features not found: {feats}")
        table = torch.load(feats, weights_only=True)
    else:  # no dump: fbank from the decoded data dir's audio (the front end decoding used)
        from asr.viz.report import _load_feats

        feats = meta["data_dir"]
        table, _ = _load_feats([by_id[u] for u in utt_ids if u in by_id], meta["data_dir"], None, meta, int(ck_meta.get("feat_dim", 80)))
    missing = [u for u in utt_ids if u not in by_id or u not in table]
    if missing:
        raise ValueError(f"utterance(s) not in {d / 'results.jsonl'} or {feats}: {missing}")
    out = Path(out_dir) if out_dir is not None else d / "plots"
    stats = _word_stats([by_id[u] for u in utt_ids]) if utt_ids else {}
    shift = float(ck_meta.get("frame_shift_s", meta["frame_shift_s"]))
    paths = []
    for u in utt_ids:
        pieces = [str(t) for t in by_id[u].get("tokens", [])]
        x = table[u].float()[None]
        with torch.no_grad():
            hs, hs_lens = model.encode(x, torch.tensor([x.shape[1]]))
            ys_in = torch.tensor([[model.sos_id] + [tok.sp.piece_to_id(p) for p in pieces]])
            w = model.decoder.cross_attention(hs, hs_lens, ys_in)[:, 0]  # (L, H, U + 1, S)
        png = out / f"{safe_file_stem(u)}_heads.png"
        paths.append(plot_head_grid(w.numpy(), pieces + [EOS], png, shift, model.subsampling_factor, _title(stats[u])))
    return paths


def choose_compare_utt(decode_dirs: Sequence[str | Path]) -> str:
    """Utterance for a comparison: the one with the longest reference that every directory decoded
    correctly (hyp == ref up to whitespace) and has attention for (a long utterance shows the alignment
    band best; ties: results order of ``decode_dirs[0]``); otherwise the first utterance common to all.

    Raises
    ------
    ValueError
        If the directories have no utterance in common.
    """
    results = [{r["utt_id"]: r for r in read_results(d)} for d in decode_dirs]
    attn_ids = []
    for d in decode_dirs:
        attn_ids.append(set(attention_ids(d)))
    common = [u for u in results[0] if all(u in res and u in a for res, a in zip(results, attn_ids))]
    if not common:
        raise ValueError(f"no utterance with attention common to all of {list(map(str, decode_dirs))}")
    correct = [u for u in common if all(normalize_whitespace(res[u]["ref"]) == normalize_whitespace(res[u]["hyp"]) for res in results)]
    if correct:
        return max(correct, key=lambda u: len(normalize_whitespace(results[0][u]["ref"])))
    return common[0]


def plot_compare(
    decode_dirs: Sequence[str | Path],
    labels: Sequence[str] | None = None,
    utt_id: str | None = None,
    out_path: str | Path | None = None,
) -> Path:
    """One figure comparing the attention of several decode directories on one utterance.

    Parameters
    ----------
    decode_dirs : sequence of str or Path
        Decode directories (e.g. one per attention scorer), one panel each, in this order.
    labels : sequence of str, optional
        Panel labels; empty/None -> each directory's ``meta.json`` ``attention`` (or its name), or, when
        two directories share a scorer, ``<experiment folder>/<decode folder>``.
        Each panel title also shows that model's hypothesis and utterance WER.
    utt_id : str, optional
        Utterance; None -> `choose_compare_utt`.
    out_path : str or Path, optional
        PNG path; default ``<decode_dirs[0]>/plots/compare_<utt_id>.png``.

    Returns
    -------
    Path
        The PNG written.

    Raises
    ------
    ValueError
        No directories, ``len(labels) != len(decode_dirs)``, or the utterance missing from a
        directory. Directories of models with different encoder frame rates (``frame_shift_s *
        subsampling``) are drawn each on its own frame rate over one time axis in seconds.
    """
    dirs = [Path(d) for d in decode_dirs]
    if not dirs:
        raise ValueError("plot_compare needs at least one decode directory")
    metas = [read_meta(d) for d in dirs]
    if labels:
        if len(labels) != len(dirs):
            raise ValueError(f"{len(labels)} labels for {len(dirs)} decode directories")
        labels = [str(x) for x in labels]
    else:
        labels = [str(m.get("attention", d.name)) for m, d in zip(metas, dirs)]
        if len(set(labels)) < len(labels):  # several experiments with one scorer: name them by their folders
            labels = [f"{d.parent.name}/{d.name}" for d in dirs]
    if utt_id is None:
        utt_id = choose_compare_utt(dirs)
    panels = []
    ref = None
    for d, label in zip(dirs, labels):
        by_id = {r["utt_id"]: r for r in read_results(d)}
        if utt_id not in by_id:
            raise ValueError(f"{d / 'results.jsonl'}: no utterance {utt_id!r}")
        row = by_id[utt_id]
        stat = _word_stats([row])[utt_id]
        ref = stat["ref"] if ref is None else ref
        w, tokens = _attention(utt_id, row, d)
        wer = "n/a" if stat["wer"] is None else f"{100.0 * stat['wer']:.1f}%"
        panels.append((f"{label}  WER {wer}  HYP: {stat['hyp']}", w, tokens))
    out = Path(out_path) if out_path is not None else dirs[0] / "plots" / f"compare_{safe_file_stem(utt_id)}.png"
    return plot_comparison(
        panels,
        out,
        suptitle=f"{utt_id}\nREF: {ref}",
        seconds_per_frame=[_seconds_per_frame(m) for m in metas],
    )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="plot")
def main(cfg: DictConfig) -> None:
    """Console entry point ``asr-plot`` (config ``conf/plot.yaml``). A refused ``out_dir`` or a malformed decode
    folder ends it with one line ``asr-plot: <path>: <reason>`` on stderr, exit status 2."""
    compare_dirs = list(cfg.compare_dirs or [])
    if cfg.decode_dir is None and not compare_dirs:
        raise SystemExit("asr-plot: set decode_dir=<dir> and/or compare_dirs=[<dir>,<dir>,...]")
    overwrite = bool(cfg.get("overwrite", False))
    paths: list[Path] = []
    try:
        if cfg.decode_dir is not None:
            out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else Path(cfg.decode_dir) / "plots"
            check_output_dir(out_dir, PLOT_TOOL, overwrite)
            with OwnedOutput(out_dir, PLOT_TOOL, overwrite, clean=False):
                paths += plot_decode_dir(
                    cfg.decode_dir, [str(u) for u in cfg.utt_ids or []], int(cfg.worst_n), out_dir, first_n=int(cfg.first_n)
                )
                if cfg.get("heads"):
                    chosen = select_utts(read_results(cfg.decode_dir), [str(u) for u in cfg.utt_ids or []], int(cfg.worst_n), int(cfg.first_n))
                    paths += plot_head_grids(cfg.decode_dir, chosen, cfg.get("feats"), out_dir, cfg.get("ckpt"))
        if compare_dirs:
            utt = cfg.compare_utt if cfg.compare_utt is None else str(cfg.compare_utt)
            if utt is None:
                utt = choose_compare_utt(compare_dirs)
            base = Path(cfg.out_dir) if cfg.out_dir is not None else Path(compare_dirs[0]) / "plots"
            with OwnedOutput(base, PLOT_TOOL, overwrite, clean=False):
                paths.append(plot_compare(compare_dirs, list(cfg.compare_labels or []), utt, base / f"compare_{safe_file_stem(utt)}.png"))
    except (ValueError, FileNotFoundError) as exc:
        print(f"asr-plot: {exc}", file=sys.stderr)
        sys.exit(2)
    for p in paths:
        print(p, flush=True)


if __name__ == "__main__":
    main()
