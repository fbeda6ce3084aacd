"""``asr-inspect``: a browsable, static HTML alignment report of a decode directory.

Usage::

    asr-inspect decode_dir=exp/an4/decode_test                     # -> exp/an4/decode_test/report/index.html
    asr-inspect decode_dir=exp/an4/decode_test data_dir=data/test feats=dump/test/feats.pt \\
                teacher_forced=true out_dir=/tmp/report

Prints the path of ``index.html``. The report (layout: :mod:`asr.viz.report`) opens from disk in any browser,
without a server or network: an index with corpus scores, error classes, the diagnostics of
:mod:`asr.viz.diagnostics` and how well each separates wrong from correct utterances (AUC), summary plots and a
sortable, filterable table of the utterances, each linking to its page (audio, spectrogram and attention on one
time axis, the coloured word alignment, per-token peak time, entropy, log-probability and CTC spike).
Config: ``conf/inspect.yaml``; Hydra creates no ``outputs/`` folder and does not change the cwd.

The report folder is the tool's only where it wrote the files: a re-run removes what the earlier report wrote
(listed in ``<out_dir>/.asr-owned.json``, :mod:`asr.utils.owned`) and nothing else, so a user's ``audio/`` or
``figures/`` files stay. A non-empty ``out_dir`` without that manifest is refused (``asr-inspect: <out_dir>:
<reason>``, exit status 2) unless ``overwrite=true``, which writes the report beside its files (replacing only
files of the report's names).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from asr.utils.paths import CONF_DIR
from asr.viz.report import build_report

__all__ = ["main"]


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="inspect")
def main(cfg: DictConfig) -> None:
    """Console entry point ``asr-inspect`` (config ``conf/inspect.yaml``). A refused ``out_dir``, a missing or
    malformed decode folder ends it with one line ``asr-inspect: <path>: <reason>`` on stderr, exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # Hydra's "disabled" job logging (conf/inspect.yaml) disables the loggers created at import, which would
    # silence the report's warnings (missing checkpoint, long-form recordings left out) and its timing line.
    logging.getLogger("asr.viz.report").disabled = False
    try:
        index = build_report(
            cfg.decode_dir, cfg.out_dir, cfg.data_dir, cfg.feats, cfg.ckpt,
            teacher_forced=bool(cfg.teacher_forced), use_model=bool(cfg.use_model), audio=bool(cfg.audio), jobs=int(cfg.jobs),
            overwrite=bool(cfg.get("overwrite", False)),
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"asr-inspect: {exc}", file=sys.stderr)
        sys.exit(2)
    print(index, flush=True)


if __name__ == "__main__":
    main()
