"""scripts/results_table.py: one row per (experiment, decode setting), with the run.sh command that made it."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import load_script


def _load():
    return load_script("results_table")


def _decode_dir(d: Path, wer: float, cer: float, **meta) -> None:
    (d / "scoring").mkdir(parents=True)
    (d / "scoring" / "wer.json").write_text(json.dumps({"wer": wer, "cer": cer}))
    base = {"checkpoint": "exp/x/checkpoints/avg5.ckpt", "attention": "location_aware", "beam_size": 10, "ctc_weight": 0.3,
            "length_penalty": 0.5, "rtf": 0.03}
    (d / "meta.json").write_text(json.dumps({**base, **meta}))


def test_rows_rebuild_the_recipe_command_including_length_penalty_and_tag(tmp_path):
    exp = tmp_path / "an4_pblstm_location_aware_mildaug_sp"
    (exp / "hydra/2026-11-21_16-25-00/.hydra").mkdir(parents=True)
    (exp / "hydra/2026-11-21_16-25-00/.hydra/overrides.yaml").write_text(
        "- experiment=an4/location_aware_mildaug_sp\n- exp_dir=exp/an4_pblstm_location_aware_mildaug_sp_x\n- threads=1\n"
    )
    (exp / "train_summary.json").write_text(
        json.dumps({"n_params": 6476422, "epochs": 70, "train_wall_s": 5400.0, "machine": "CPU x2 (1 torch threads)"})
    )
    _decode_dir(exp / "decode_dev_beam10_ctc0.3_avg5", 20.0, 10.0)
    _decode_dir(exp / "decode_test_beam10_ctc0.3_avg5", 10.0, 5.0)
    _decode_dir(exp / "decode_dev_beam10_ctc0.5_lp1.0_avg5", 19.0, 9.0, ctc_weight=0.5, length_penalty=1.0)
    _decode_dir(exp / "decode_test_beam10_ctc0.5_lp1.0_avg5", 9.5, 4.5, ctc_weight=0.5, length_penalty=1.0)
    _decode_dir(exp / "decode_test_beam10", 30.0, 15.0)  # no dev decode: no row
    (tmp_path / "an4_pblstm_location_aware_smoke").mkdir()  # no train_summary.json: ignored

    rows = _load().rows(tmp_path, None)
    assert len(rows) == 2
    plain, lp = rows
    assert "| joint λ=0.3, beam 10, avg5 | 20.0 | 10.0 | 10.0 | 5.0 | 6.48 M | 70 | 90.0 min |" in plain
    assert "--ctc_weight 0.3 --average 5 --train_args \"threads=1\"" in plain
    assert "--length_penalty" not in plain
    assert "| joint λ=0.5, beam 10, lp 1, avg5 | 19.0 | 9.0 | 9.5 | 4.5 |" in lp
    assert "--experiment an4/location_aware_mildaug_sp --beam_size 10 --ctc_weight 0.5 --average 5 --length_penalty 1.0" in lp
    assert lp.rstrip("|").strip().endswith("--decode_args threads=1`")  # a 1-thread training: so is the decode
    assert _load().rows(tmp_path, "beam10_ctc0.3_avg5") == [plain]


def _experiment(root: Path, name: str, overrides: str, n_params: int, epochs: int, wall_s: float) -> Path:
    exp = root / name
    (exp / "hydra/2026-11-21_10-00-00/.hydra").mkdir(parents=True)
    (exp / "hydra/2026-11-21_10-00-00/.hydra/overrides.yaml").write_text(overrides)
    (exp / "train_summary.json").write_text(
        json.dumps({"n_params": n_params, "epochs": epochs, "train_wall_s": wall_s, "machine": "CPU x2 (1 torch threads)"})
    )
    return exp


def test_ensemble_decode_gives_a_row_with_the_asr_decode_command(tmp_path):
    x4 = _experiment(tmp_path, "an4_pblstm_location_aware_noaug_x4", "- experiment=an4/location_aware_noaug\n- model.encoder.subsample=[2,2,1]\n",
                     6148742, 16, 2049.3)
    _experiment(tmp_path, "an4_pblstm_location_aware_noaug", "- experiment=an4/location_aware\n- augment=none\n", 6476422, 30, 3660.0)
    _decode_dir(x4 / "decode_dev_beam10_ctc0.3_avg5", 20.0, 10.0)
    _decode_dir(x4 / "decode_test_beam10_ctc0.3_avg5", 9.4, 5.6)
    members = ["exp/an4_pblstm_location_aware_noaug_x4/checkpoints/avg5.ckpt", "exp/an4_pblstm_location_aware_noaug/checkpoints/best.ckpt"]
    ens = tmp_path / "ensemble_x4_x8"  # a folder of its own, no train_summary.json
    _decode_dir(ens / "decode_dev_beam10_ctc0.3", 18.0, 9.0, checkpoint=members[0], ensemble=members, threads=1, rtf=0.06)
    _decode_dir(ens / "decode_test_beam10_ctc0.3", 8.5, 5.0, checkpoint=members[0], ensemble=members, threads=1, rtf=0.06)

    rows = _load().rows(tmp_path, None)
    assert len(rows) == 2  # the x4 model's own row and the ensemble's
    (row,) = [r for r in rows if "ensemble" in r]
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    assert cells[:10] == [
        "ensemble of an4_pblstm_location_aware_noaug_x4 + an4_pblstm_location_aware_noaug",
        "an4/location_aware_noaug --tag _x4 + an4/location_aware --tag _noaug",
        "joint λ=0.3, beam 10, avg5 + best", "18.0", "9.0", "8.5", "5.0", "12.63 M", "16 + 30", "95.2 min",
    ]
    assert cells[11] == "0.060"
    decode = (
        "OMP_NUM_THREADS=1 asr-decode ckpt=exp/an4_pblstm_location_aware_noaug_x4/checkpoints/avg5.ckpt "
        "'ensemble=[exp/an4_pblstm_location_aware_noaug/checkpoints/best.ckpt]' data_dir=data/{data} dump_dir=dump/{data} "
        "out_dir=exp/ensemble_x4_x8/decode_{split}_beam10_ctc0.3 beam_size=10 ctc_weight=0.3 length_penalty=0.5 threads=1 "
        "&& asr-score decode_dir=exp/ensemble_x4_x8/decode_{split}_beam10_ctc0.3"
    )
    assert cells[12] == "`" + decode.format(data="train_dev", split="dev") + " && " + decode.format(data="test", split="test") + "`"


def test_windowed_and_hard_decodes_get_their_run_sh_options(tmp_path):
    exp = _experiment(tmp_path, "an4_pblstm_location_aware_x4_noaug", "- experiment=an4/location_aware_x4_noaug\n- threads=1\n", 6148742, 16, 900.0)
    for split in ("dev", "test"):
        _decode_dir(exp / f"decode_{split}_beam10_ctc0.3_win8-24_avg5", 17.0, 10.0, att_window_back=8, att_window_ahead=24)
        _decode_dir(exp / f"decode_{split}_beam10_ctc0.3_hard_avg5", 18.0, 11.0, hard_attention=True)
    hard, win = _load().rows(tmp_path, None)
    assert "| joint λ=0.3, beam 10, window 8:24, avg5 |" in win and "--average 5 --att_window 8:24" in win
    assert "| joint λ=0.3, beam 10, hard attention, avg5 |" in hard and "--average 5 --hard_attention true" in hard


def test_a_warm_restart_row_describes_its_whole_chain(tmp_path):
    """``init_param=exp/<parent>/...``: epochs and training time of the parents are added, their training commands
    come first; a parent whose folder is gone leaves the row as the experiment alone."""
    _experiment(tmp_path, "an4_transformer_ctc_cpu_a", "- experiment=an4/transformer_ctc_cpu\n- threads=2\n- trainer.max_epochs=212\n",
                4744720, 212, 8722.0)
    _experiment(tmp_path, "an4_transformer_ctc_cpu_b", "- experiment=an4/transformer_ctc_cpu\n"
                "- init_param=exp/an4_transformer_ctc_cpu_a/checkpoints/last.ckpt\n- trainer.max_epochs=100\n", 4744720, 100, 3000.0)
    c = _experiment(tmp_path, "an4_transformer_ctc_cpu_c", "- experiment=an4/transformer_ctc_cpu\n"
                    "- init_param=exp/an4_transformer_ctc_cpu_b/checkpoints/last.ckpt\n- trainer.max_epochs=50\n", 4744720, 50, 1278.0)
    gone = _experiment(tmp_path, "an4_transformer_ctc_cpu_d", "- experiment=an4/transformer_ctc_cpu\n"
                       "- init_param=exp/an4_transformer_ctc_cpu_zz/checkpoints/last.ckpt\n", 4744720, 40, 600.0)
    for exp in (c, gone):
        for split in ("dev", "test"):
            _decode_dir(exp / f"decode_{split}_beam10_ctc0.5_avg5", 15.0, 9.0, ctc_weight=0.5, encoder="transformer", decoder="transformer")
    chained, alone = _load().rows(tmp_path, None)
    cells = [x.strip() for x in chained.strip("|").split(" | ")]
    assert cells[1] == "an4/transformer_ctc_cpu --tag _c"
    assert cells[8:10] == ["212 + 100 + 50", "216.7 min"]
    a, b, last = cells[12].strip("`").split(" && ")
    assert a == ('OMP_NUM_THREADS=1 recipes/an4/run.sh --an4_root $AN4_ROOT --stage 4 --stop_stage 4 --experiment an4/transformer_ctc_cpu '
                 '--tag _a --train_args "threads=2 trainer.max_epochs=212"')
    assert b.endswith('--tag _b --train_args "init_param=exp/an4_transformer_ctc_cpu_a/checkpoints/last.ckpt trainer.max_epochs=100"')
    assert last.startswith("OMP_NUM_THREADS=1 recipes/an4/run.sh --an4_root $AN4_ROOT --stage 4 --experiment an4/transformer_ctc_cpu")
    assert '--tag _c --train_args "init_param=exp/an4_transformer_ctc_cpu_b/checkpoints/last.ckpt trainer.max_epochs=50"' in last
    assert "| 40 | 10.0 min |" in alone and alone.count("run.sh") == 1
