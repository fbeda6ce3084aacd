"""asr.viz.diagnostics on synthetic attention matrices whose faults are known by construction."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from asr.metrics.wer import per_utterance
from asr.viz.diagnostics import (
    attention_diagnostics,
    ctc_disagreement,
    roc_auc,
    row_entropy,
    speech_frames,
    word_error_classes,
)


def one_hot(peaks: list[int], S: int, eos: int | None = None) -> np.ndarray:
    """``(len(peaks) + 1, S)``: row u all on frame peaks[u]; last row (<eos>) on ``eos`` (default: last frame)."""
    w = np.zeros((len(peaks) + 1, S), np.float32)
    w[np.arange(len(peaks)), peaks] = 1.0
    w[-1, S - 1 if eos is None else eos] = 1.0
    return w


def test_clean_diagonal_is_clean():
    d = attention_diagnostics(one_hot(list(range(0, 20, 2)), 20))
    assert d.backward_jumps == 0 and d.max_backward == 0 and d.max_forward == 2
    assert d.diagonal_focus == pytest.approx(1.0) and d.focus == pytest.approx(1.0)
    assert d.entropy == pytest.approx(0.0)
    assert d.coverage_gap == 0.0  # every frame within 1 of an attended one
    assert d.repeats == 0 and d.max_stall == 1 and d.early_stop == 0.0


def test_loop_gives_backward_jumps():
    # tokens go 0..8, then jump back to 2 and run to 8 again (a repeated word)
    d = attention_diagnostics(one_hot([0, 2, 4, 6, 8, 2, 4, 6, 8], 10))
    assert d.backward_jumps == 1 and d.max_backward == 6
    assert d.diagonal_focus < 0.8


def test_one_frame_wobble_is_tolerated():
    assert attention_diagnostics(one_hot([0, 3, 2, 5, 7], 9)).backward_jumps == 0
    assert attention_diagnostics(one_hot([0, 3, 2, 5, 7], 9), tolerance=0).backward_jumps == 1


def test_skip_leaves_coverage_gap_and_forward_jump():
    # 30 frames of speech; tokens attend 0..9, then skip to 20..29: frames 11..18 (dilated by 1) never attended
    d = attention_diagnostics(one_hot([0, 2, 4, 6, 8, 20, 22, 24, 26, 28], 30))
    assert d.max_forward == 12
    assert d.coverage_gap == pytest.approx(9 / 30)
    assert d.early_stop == 0.0


def test_early_stop_counts_unattended_speech_after_last_token():
    w = one_hot([0, 2, 4, 6], 20)
    d = attention_diagnostics(w)
    assert d.early_stop == pytest.approx(12 / 20)  # frames 8..19 (7 is within 1 of 6)
    speech = np.zeros(20, bool)
    speech[:8] = True  # the rest is silence: stopping there is right
    assert attention_diagnostics(w, speech).early_stop == 0.0


def test_stall_and_repeats():
    d = attention_diagnostics(one_hot([0, 3, 3, 3, 3, 6], 8))
    assert d.max_stall == 4 and d.repeats == 3


def test_uniform_attention_has_max_entropy_and_no_focus():
    S = 16
    w = np.full((5, S), 1.0 / S, np.float32)
    d = attention_diagnostics(w)
    assert d.entropy == pytest.approx(np.log(S))
    assert d.focus == pytest.approx(1.0 / S)
    assert d.coverage_gap == 1.0  # no row puts 0.1 on any frame


def test_empty_hypothesis_and_zero_eos_row():
    d = attention_diagnostics(np.zeros((1, 7), np.float32))
    assert d.coverage_gap == 1.0 and d.early_stop == 1.0 and d.backward_jumps == 0
    assert row_entropy(np.zeros((1, 7)))[0] == pytest.approx(np.log(7))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="U \\+ 1, S"):
        attention_diagnostics(np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        attention_diagnostics(np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="speech mask"):
        attention_diagnostics(one_hot([0], 4), np.ones(5, bool))


def test_speech_frames_from_energy():
    fb = np.full((80, 10), -10.0)
    fb[16:48] = 5.0  # input frames 16..47 are loud
    mask = speech_frames(fb, subsampling=8, n_enc_frames=10)
    assert mask.tolist() == [False, False, True, True, True, True, False, False, False, False]
    with pytest.raises(ValueError):
        speech_frames(np.zeros((0, 10)), 8, 1)


def test_ctc_disagreement():
    edit, offset, spikes = ctc_disagreement(["A", "B", "C"], [1, 4, 7], ["A", "X", "C"], [2, 4, 9])
    assert edit == pytest.approx(1 / 3)
    assert offset == pytest.approx((1 + 2) / 2)
    assert spikes == [2, None, 9]
    assert ctc_disagreement(["A"], [0], [], [])[1] is None


def test_roc_auc():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert roc_auc([1, 1, 1, 1], [False, True, False, True]) == 0.5
    assert roc_auc([0.3, 0.1, 0.2, 0.4], [True, False, False, True]) == 1.0
    assert roc_auc([0.1, 0.2], [True, True]) is None
    # ties between classes count one half: pos {1, 2}, neg {1, 0} -> (0.5 + 1 + 1 + 1) / 4
    assert roc_auc([1, 2, 1, 0], [True, True, False, False]) == pytest.approx(3.5 / 4)


def test_word_error_classes_finds_repeated_word_deletion():
    stats = per_utterance(["EIGHT EIGHT FOUR", "ONE TWO", "A B"], ["EIGHT FOUR", "ONE ONE TWO", "A C"], ["u1", "u2", "u3"])
    counts = sum((word_error_classes(s["steps"]) for s in stats), Counter())
    assert counts == Counter({"deletion": 1, "repeated-word deletion": 1, "insertion": 1, "repeated-word insertion": 1, "substitution": 1})
