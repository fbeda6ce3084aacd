"""Locations inside the project.

The Hydra configs live in the top-level ``conf/`` folder (as the user asked), not inside the package, so
console scripts find them relative to this file. That works for the editable install the README uses
(``pip install -e .``); set ``ASR_CONF_DIR`` to point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Absolute path of the Hydra config folder (``<repo>/conf``), overridable with ``$ASR_CONF_DIR``.
CONF_DIR: Path = Path(os.environ.get("ASR_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))
