"""asr-inspect: a report over the real AN4 utterances of tests/data/an4, built and checked in a headless browser.

The model is a tiny pBLSTM + CTC trained for a few seconds on the 6 train_nodev utterances, enough for hypotheses
that differ between utterances (some right words, some wrong) so that the WER column has distinct values. The
report covers all 10 real utterances (test, train_dev, train_nodev) with teacher forcing.

The browser test uses Playwright for Python driving Debian's Chromium (``/usr/bin/chromium``, or ``$CHROMIUM``):
Playwright reports console messages and uncaught page errors as events and waits for loads and elements itself,
which makes "no console errors" and "every figure rendered" direct to assert. It never downloads a browser
(``playwright install`` is not used); without Chromium or the ``playwright`` package the test is skipped, naming
what is missing (``.ci/run`` installs ``chromium``; ``playwright`` is in the ``test`` extra).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from asr.utils.paths import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def decoded(mini_an4, tmp_path_factory):
    """``(decode_dir, data_dir)``: the 10 real utterances decoded by a briefly trained tiny CTC model."""
    from asr.cli.decode import decode
    from asr.cli.train import train
    from asr.data.datadir import check_data_dir, write_data_dir

    root = tmp_path_factory.mktemp("inspect")
    overrides = [
        f"data.root={mini_an4 / 'data'}", f"data.dump={mini_an4 / 'dump'}", "tokenizer=char", f"exp_dir={root / 'exp'}",
        "model.encoder.hidden_size=48", "model.encoder.num_layers=2", "model.encoder.subsample=[4,2]", "model.encoder.dropout=0.0",
        "model.decoder.hidden_size=48", "model.decoder.embed_dim=16", "model.decoder.dropout=0.0", "model.label_smoothing=0.0",
        "model.ctc_weight=0.3", "data.dev=train_nodev", "data.batch_size=6", "trainer.max_epochs=80",
        "trainer.check_val_every_n_epoch=1000", "optim.lr=3e-3", "optim.warmup_steps=10", "trainer.enable_progress_bar=false", "threads=1",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    train(cfg)
    utts = [u for split in ("test", "train_dev", "train_nodev") for u in check_data_dir(mini_an4 / "data" / split)[0]]
    data_dir = write_data_dir(utts, root / "data_all")
    out = root / "decode"
    decode({"ckpt": str(root / "exp/checkpoints/last.ckpt"), "data_dir": str(data_dir), "out_dir": str(out), "beam_size": 2,
            "max_len_ratio": 1.5, "min_len": 1, "length_penalty": 0.5, "batch_size": 10, "resume": False})
    return out, data_dir


@pytest.fixture(scope="module")
def report(decoded, tmp_path_factory) -> Path:
    """The report of `decoded` (teacher forced), built by the ``asr-inspect`` command; its ``index.html``."""
    decode_dir, data_dir = decoded
    out = tmp_path_factory.mktemp("report")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "asr.cli.inspect", f"decode_dir={decode_dir}", f"out_dir={out}", f"data_dir={data_dir}",
                           "teacher_forced=true"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out / "index.html")
    return out / "index.html"


def test_report_files(report, decoded):
    decode_dir, _ = decoded
    ids = [json.loads(line)["utt_id"] for line in (decode_dir / "results.jsonl").read_text().splitlines()]
    out = report.parent
    payload = json.loads((out / "report.json").read_text())
    assert [u["utt_id"] for u in payload["utterances"]] == ids
    for u in ids:
        assert (out / "utts" / f"{u}.html").is_file() and (out / "utts" / f"{u}.png").stat().st_size > 10_000
        assert (out / "audio" / f"{u}.wav").is_file()
    first = payload["utterances"][0]
    assert first["speaker"] and first["duration"] > 0.5
    diag = first["diag"]
    assert diag["ctc_edit"] is not None  # the model has a CTC branch
    assert 0.0 <= diag["coverage_gap"] <= 1.0 and diag["entropy"] >= 0.0
    page = (out / "utts" / f"{ids[0]}.html").read_text()
    assert 'id="tokens"' in page and "<audio" in page
    assert set(payload["auc_wrong_vs_correct"]) >= {"entropy", "coverage_gap", "backward_jumps"}
    assert set(payload["auc_confidence"]) == {"length-normalised beam score", "mean token log-prob (model pass)"}


def test_model_pass_batched_equals_one_by_one(decoded):
    """Padded batches give each utterance what running it alone gives (log-probs, CTC path, forced attention)."""
    import numpy as np

    from asr.decoding.results import read_meta, read_results
    from asr.viz.report import _load_feats, model_pass

    decode_dir, data_dir = decoded
    rows = read_results(decode_dir)
    meta = read_meta(decode_dir)
    feats, _ = _load_feats(rows, data_dir, None, meta, 80)
    assert len({f.shape[0] for f in feats.values()}) > 1  # lengths differ: the batches are padded
    batched = model_pass(meta["checkpoint"], feats, rows, teacher_forced=True, batch_size=16)
    single = model_pass(meta["checkpoint"], feats, rows, teacher_forced=True, batch_size=1)
    assert set(batched) == set(single) == {r["utt_id"] for r in rows}
    for u, one in single.items():
        many = batched[u]
        assert many.ctc_pieces == one.ctc_pieces and many.ctc_frames == one.ctc_frames
        assert many.forced_pieces == one.forced_pieces and many.forced.shape == one.forced.shape
        np.testing.assert_allclose(many.token_logprob, one.token_logprob, atol=1e-4)
        np.testing.assert_allclose(many.forced, one.forced, atol=1e-4)


def test_checkpoint_relative_to_recipe(tmp_path):
    """meta.json's checkpoint is relative to the folder asr-decode ran in (the recipe), found from anywhere."""
    from asr.viz.report import _resolve_ckpt

    recipe = tmp_path / "recipe"
    ck = recipe / "exp/m/checkpoints/avg5.ckpt"
    ck.parent.mkdir(parents=True)
    ck.write_bytes(b"")
    decode_dir = recipe / "exp/m/decode_test"
    decode_dir.mkdir()
    assert _resolve_ckpt(None, {"checkpoint": "exp/m/checkpoints/avg5.ckpt"}, decode_dir).resolve() == ck.resolve()
    assert _resolve_ckpt(None, {"checkpoint": "exp/other/avg5.ckpt"}, decode_dir) is None


@pytest.fixture(scope="module")
def browser_kit():
    """Playwright's sync API and Chromium's path, or pytest.skip naming what is missing (requested before the
    report fixtures, so a machine without a browser skips without training the model)."""
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("no Chromium found (apt-get install chromium, or set $CHROMIUM): browser test not run")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[test]'): browser test not run")
    return sync_playwright, exe


def test_report_in_headless_chromium(browser_kit, report, decoded, tmp_path):
    sync_playwright, exe = browser_kit
    decode_dir, _ = decoded
    n_utts = len((decode_dir / "results.jsonl").read_text().splitlines())
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
        page.goto(report.as_uri(), wait_until="load")
        page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
        assert (tmp_path / "index.png").stat().st_size > 20_000

        rows = page.locator("#utts tbody tr")
        assert rows.count() == n_utts
        imgs = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.complete && e.naturalWidth])")
        assert imgs and all(w and w > 0 for _, w in imgs), imgs

        def column(col: int) -> list[str]:
            return page.eval_on_selector_all("#utts tbody tr", f"rs => rs.map(r => r.cells[{col}].getAttribute('data-v') ?? r.cells[0].textContent.trim())")

        ids = lambda: column(0)  # noqa: E731
        heads = page.eval_on_selector_all("#utts thead th", "hs => hs.map(h => h.textContent.trim())")
        wer_col = heads.index("WER %")
        wers = [float(v) for v in column(wer_col)]
        assert len(set(wers)) > 1, f"the tiny model gave every utterance the same WER {wers}: sorting cannot be tested"
        before = ids()
        page.locator("#utts thead th").nth(wer_col).click()
        asc = [float(v) for v in column(wer_col)]
        assert asc == sorted(wers)
        page.locator("#utts thead th").nth(wer_col).click()
        desc = [float(v) for v in column(wer_col)]
        assert desc == sorted(wers, reverse=True)
        assert ids() != before or asc != wers  # the order changed on one of the two clicks
        assert ids()[0] != ids()[-1]

        target = ids()[0]
        page.fill("#filter", target)
        assert page.locator("#utts tbody tr:visible").count() == 1
        page.fill("#filter", "")
        assert page.locator("#utts tbody tr:visible").count() == n_utts

        page.locator(f"#utts tbody tr[data-utt='{target}'] a").click()
        page.wait_for_load_state("load")
        assert page.url.endswith(f"/utts/{target}.html")
        assert page.locator("h1").inner_text() == target
        audio = page.evaluate("""() => new Promise(resolve => {
            const a = document.getElementById('audio');
            const done = () => resolve({ready: a.readyState, duration: a.duration, error: a.error && a.error.code,
                                        can: a.canPlayType('audio/wav'), src: a.currentSrc});
            if (a.readyState >= 1) done(); else { a.addEventListener('loadedmetadata', done); a.addEventListener('error', done); }
        })""")
        assert audio["error"] is None and audio["ready"] >= 1 and audio["can"], audio
        assert audio["duration"] > 0.5 and audio["src"].endswith(f"/audio/{target}.wav")
        imgs = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.complete && e.naturalWidth])")
        assert any(src == f"{target}.png" for src, _ in imgs) and all(w and w > 0 for _, w in imgs), imgs
        rows_by_id = {r["utt_id"]: r for r in map(json.loads, (decode_dir / "results.jsonl").read_text().splitlines())}
        assert page.locator("#tokens tr").count() - 1 == len(rows_by_id[target]["tokens"]) + 1  # + <eos>
        assert page.locator("#alignment td").count() > 0
        page.screenshot(path=str(tmp_path / "utt.png"), full_page=True)
        page.locator("#back").click()
        page.wait_for_load_state("load")
        assert page.locator("#utts tbody tr").count() == n_utts
        browser.close()
    assert problems == []
