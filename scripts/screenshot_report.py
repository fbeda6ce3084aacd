"""Screenshots of an ``asr-inspect`` report in headless Chromium (Playwright driving Debian's ``chromium``).

    python scripts/screenshot_report.py REPORT_DIR OUT_DIR [UTT_ID]
    # -> OUT_DIR/inspect_index.png, OUT_DIR/inspect_index_table.png and OUT_DIR/inspect_<utt>.png
    #    (default utt: the first with the most word errors)

Never downloads a browser: it uses ``$CHROMIUM`` or ``chromium`` on PATH (``apt-get install chromium``) and the
``playwright`` package of the ``test`` extra. The index shot is the top of the page (1400 x 1800 px), the table shot
the utterance table sorted by WER (worst first, 1400 x 900 px from its heading), the utterance page is shot whole.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3):
        raise SystemExit(__doc__)
    report, out = Path(argv[0]), Path(argv[1])
    payload = json.loads((report / "report.json").read_text(encoding="utf-8"))
    utts = payload["utterances"]
    utt = argv[2] if len(argv) == 3 else max(utts, key=lambda u: (u["errors"], u["n_tokens"]))["utt_id"]
    stem = next(u["stem"] for u in utts if u["utt_id"] == utt)
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not exe:
        raise SystemExit("no chromium on PATH (apt-get install chromium) and $CHROMIUM unset")
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto((report / "index.html").resolve().as_uri(), wait_until="load")
        page.screenshot(path=str(out / "inspect_index.png"))
        wer = page.locator("#utts thead th", has_text="WER %")
        wer.click()
        wer.click()  # second click: descending
        top = page.evaluate("() => [...document.querySelectorAll('h2')].find(h => h.textContent === 'Utterances')"
                            ".getBoundingClientRect().top + window.scrollY")
        page.screenshot(path=str(out / "inspect_index_table.png"), full_page=True,
                        clip={"x": 0, "y": top - 10, "width": 1400, "height": 900})
        page.goto((report / "utts" / f"{stem}.html").resolve().as_uri(), wait_until="load")
        page.screenshot(path=str(out / f"inspect_{stem}.png"), full_page=True)
        browser.close()
    print(out / "inspect_index.png")
    print(out / "inspect_index_table.png")
    print(out / f"inspect_{stem}.png")


if __name__ == "__main__":
    main(sys.argv[1:])
