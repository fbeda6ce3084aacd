"""Scoring: corpus WER/CER (sclite conventions via jiwer), per-utterance alignments, trn files."""

from __future__ import annotations

import pytest

from asr.metrics.wer import ErrorCounts, per_utterance, read_trn, score, write_trn

# Hand-worked word example:
#   u1  ref "A B C D"      hyp "A X C"          -> hits A,C (2); sub B->X (1); del D (1)   = 2 errors / 4 words
#   u2  ref "E F G H I J"  hyp "E F G H I J K"  -> hits 6; ins K (1)                       = 1 error  / 6 words
#   corpus: sub 1, del 1, ins 1, hits 8, n_ref 10  -> WER = 3 / 10 = 0.30
#   mean of per-utterance WERs = (2/4 + 1/6) / 2 = 0.333...  (wrong, must not be used)
REFS = ["A B C D", "E F G H I J"]
HYPS = ["A X C", "E F G H I J K"]


def test_corpus_wer_is_total_edits_over_total_ref_words():
    r = score(REFS, HYPS)
    assert r.words == ErrorCounts(sub=1, dele=1, ins=1, hits=8, n_ref=10)
    assert r.n_utts == 2
    assert r.n_sent_err == 2
    assert r.wer == pytest.approx(0.30)
    mean_of_utts = (2 / 4 + 1 / 6) / 2
    assert r.wer != pytest.approx(mean_of_utts)
    d = r.as_dict()
    assert d["wer"] == pytest.approx(30.0)  # percent
    assert d["words"] == {"sub": 1, "del": 1, "ins": 1, "hits": 8, "n_ref": 10}


def test_cer_hand_worked():
    # chars incl. the single space between words; whitespace collapsed first:
    #   ref "AB CD" = A,B,_,C,D (5)   hyp "AB   D" -> "AB D" = A,B,_,D  -> 1 deletion (C)
    #   ref "AB"    = A,B (2)         hyp "ABC"               -> 1 insertion (C)
    #   CER = 2 / 7
    r = score(["AB CD", "AB"], ["AB   D", "ABC"])
    assert r.chars == ErrorCounts(sub=0, dele=1, ins=1, hits=6, n_ref=7)
    assert r.cer == pytest.approx(2 / 7)
    # words: "AB CD" vs "AB D" -> 1 sub; "AB" vs "ABC" -> 1 sub; 2 / 3 words
    assert r.words == ErrorCounts(sub=2, dele=0, ins=0, hits=1, n_ref=3)


def test_empty_reference_counts_insertions():
    r = score(["", "A"], ["X Y", "A"])
    assert r.words == ErrorCounts(sub=0, dele=0, ins=2, hits=1, n_ref=1)
    assert r.wer == pytest.approx(2.0)
    assert r.chars.ins == 3  # "X Y" = X, space, Y
    assert score([""], [""]).wer == 0.0
    with pytest.raises(ValueError):
        _ = ErrorCounts(sub=0, dele=0, ins=2, hits=0, n_ref=0).rate


def test_per_utterance_counts_and_alignment():
    rows = per_utterance(REFS, HYPS, ["u1", "u2"])
    assert [r["utt_id"] for r in rows] == ["u1", "u2"]
    u1, u2 = rows
    assert (u1["sub"], u1["del"], u1["ins"], u1["hits"], u1["n_ref"], u1["errors"]) == (1, 1, 0, 2, 4, 2)
    assert u1["wer"] == pytest.approx(0.5)
    assert u1["alignment"] == "REF:  A B C D\nHYP:  A X C *\n        S   D"
    assert (u2["ins"], u2["errors"]) == (1, 1)
    assert u2["alignment"].splitlines()[-1].strip() == "I"
    assert u2["alignment"].splitlines()[0] == "REF:  E F G H I J *"


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score(REFS, HYPS[:1])
    with pytest.raises(ValueError):
        per_utterance(REFS, HYPS, ["u1"])


def test_trn_round_trip(tmp_path):
    texts = {"u1": "HELLO  WORLD", "u2": "", "spk-a_003": "A B"}
    p = write_trn(tmp_path / "sub" / "hyp.trn", texts)
    assert p.read_text().splitlines()[0] == "HELLO WORLD (u1)"
    assert read_trn(p) == {"u1": "HELLO WORLD", "u2": "", "spk-a_003": "A B"}
    assert list(read_trn(p)) == ["u1", "u2", "spk-a_003"]


def test_malformed_trn_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.trn"
    p.write_text("GOOD LINE (u1)\nNO ID HERE\n")
    with pytest.raises(ValueError, match=r"bad\.trn:2:"):
        read_trn(p)
    p.write_text("A (u1)\nB (u1)\n")
    with pytest.raises(ValueError, match="duplicate"):
        read_trn(p)
