import math
import sys

import pytest

from peftlab.evaluate.metrics import codexglue_bleu, corpus_bleu, rouge_l, text_metrics

CAT = "the cat sat on the mat"
CAT_REF = "the cat is on the mat"


@pytest.mark.parametrize("metric", [corpus_bleu, codexglue_bleu, rouge_l])
def test_identical_text_scores_100(metric):
    texts = [CAT, "returns the number of rows in the table"]
    assert metric(texts, list(texts)) == pytest.approx(100.0)


@pytest.mark.parametrize("metric", [corpus_bleu, rouge_l])
def test_disjoint_text_scores_0(metric):
    assert metric(["alpha beta gamma delta"], ["one two three four"]) == 0.0


def test_codexglue_disjoint_is_the_smoothed_minimum():
    # 4 tokens each, nothing shared: p1 = 0/4 (unsmoothed, log(0 + float_info.min)),
    # p2 = (0+1)/(3+1), p3 = (0+1)/(2+1), p4 = (0+1)/(1+1), BP = 1.
    # score = 100 * (min / 4 * 1/4 * 1/3 * 1/2) ** (1/4) = 100 * min**0.25 / 96**0.25 ~ 1e-76.
    expected = 100 * sys.float_info.min**0.25 / 96**0.25
    got = codexglue_bleu(["alpha beta gamma delta"], ["one two three four"])
    assert got == pytest.approx(expected, rel=1e-9)
    assert 0 < got < 1e-70


def test_codexglue_hand_computed():
    # Sentence 1: CAT vs CAT_REF, 6 tokens each.
    #   1-grams: the x2, cat, on, mat match -> 5/6 (unigrams are not smoothed)
    #   2-grams: "the cat", "on the", "the mat" match, 5 guesses -> (3+1)/(5+1) = 4/6
    #   3-grams: "on the mat" matches, 4 guesses -> (1+1)/(4+1) = 2/5
    #   4-grams: none of 3 match -> (0+1)/(3+1) = 1/4
    #   BP: exp(min(0, 1 - (6+1)/(6+1))) = 1
    #   s1 = (5/6 * 4/6 * 2/5 * 1/4) ** (1/4) = (1/18) ** (1/4) ~ 0.48549
    # Sentence 2: "get the value" vs "get the value of x", 3 vs 5 tokens.
    #   p1 = 3/3; p2 = (2+1)/(2+1); p3 = (1+1)/(1+1); p4 = (0+1)/(0+1): all 1.
    #   BP: exp(1 - (5+1)/(3+1)) = exp(-0.5) ~ 0.60653 (standard BLEU would give exp(1 - 5/3)).
    # Mean x100 ~ 54.60.
    s1 = (1 / 18) ** 0.25
    s2 = math.exp(-0.5)
    got = codexglue_bleu([CAT, "get the value"], [CAT_REF, "get the value of x"])
    assert got == pytest.approx(100 * (s1 + s2) / 2, abs=1e-6)
    assert codexglue_bleu([CAT], [CAT_REF]) == pytest.approx(100 * s1, abs=1e-6)


def test_codexglue_matches_published_evaluator_output():
    # Code-Text/code-to-text/evaluator/{predictions,reference}.txt in microsoft/CodeXGLUE;
    # their README shows the evaluator printing 9.554726113590661 for these five pairs.
    predictions = [
        "Prints a summary message",
        "Finds the output from the output file",
        "Verify that the given JSON element is present .",
        "Determines the specified compression compression .",
        "Creates a new project .",
    ]
    references = [
        "Outputs the deferred summary information saved via",
        "Inspect the file referenced in the kubectl stderr to make it easier for developer to"
        " understand what s going on",
        "make sure to never prune the ejson - keys secret",
        "Determine the best compressor for the current system . This method returns the class"
        " not an instance of the class .",
        "Create the bff file using + mkinstallp + .",
    ]
    assert codexglue_bleu(predictions, references) == pytest.approx(9.554726113590661, abs=1e-12)


def test_codexglue_tokenisation_lowercases_and_splits_punctuation_and_underscores():
    # "Returns" -> "returns"; "value." -> "value ."; "max_len" -> "max _ len" (mteval stage).
    prediction, reference = "Returns the Value. Uses max_len", "returns the value . uses max _ len"
    assert codexglue_bleu([prediction], [reference]) == 100.0


def test_codexglue_empty_prediction_keeps_evaluator_arithmetic():
    # Every precision term is (0 + s)/(0 + s) = 1, leaving BP = exp(1 - (5+1)/(0+1)) = exp(-5).
    assert codexglue_bleu([""], ["one two three four five"]) == pytest.approx(100 * math.exp(-5))


def test_corpus_bleu_is_sacrebleu_corpus_level():
    sacrebleu = pytest.importorskip("sacrebleu")
    predictions = [CAT, "a quick brown fox jumps", "hello world"]
    references = [CAT_REF, "the quick brown fox jumped over", "hello there world"]
    expected = sacrebleu.corpus_bleu(predictions, [references]).score
    sentence_mean = sum(
        sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(predictions, references)
    ) / len(predictions)
    got = corpus_bleu(predictions, references)
    assert got == expected
    assert abs(got - sentence_mean) > 1.0  # pooled counts, not an average of sentences


def test_rouge_l_hand_checked_lcs():
    # LCS("cat dog bird fish", "cat bird cow") = "cat bird" (2): P = 2/4, R = 2/3, F = 4/7.
    assert rouge_l(["cat dog bird fish"], ["cat bird cow"]) == pytest.approx(100 * 4 / 7)
    # LCS(CAT, CAT_REF) = "the cat on the mat" (5 of 6 each): F = 5/6.
    assert rouge_l([CAT], [CAT_REF]) == pytest.approx(100 * 5 / 6)
    # Mean over sentences.
    assert rouge_l([CAT, "cat dog bird fish"], [CAT_REF, "cat bird cow"]) == pytest.approx(
        100 * (5 / 6 + 4 / 7) / 2
    )


def test_rouge_l_uses_stemming():
    # Porter stems "Returns"/"return" and "values"/"value" alike; without stemming F would be 1/3.
    assert rouge_l(["Returns the values"], ["return the value"]) == pytest.approx(100.0)


def test_newlines_and_tabs_do_not_split_examples():
    # Each becomes a space; "-\n" must not be joined away as sacrebleu's 13a tokeniser would.
    broken = ["the cat\nsat on\r\nthe\tmat", "get the-\nvalue"]
    flat = [CAT, "get the- value"]
    references = [CAT_REF, "get the - value"]
    assert text_metrics(broken, references) == text_metrics(flat, references)


def test_text_metrics_keys():
    scores = text_metrics([CAT], [CAT_REF])
    assert set(scores) == {"bleu", "codexglue_bleu", "rouge_l"}
    assert scores["codexglue_bleu"] == codexglue_bleu([CAT], [CAT_REF])


@pytest.mark.parametrize("metric", [corpus_bleu, codexglue_bleu, rouge_l, text_metrics])
def test_length_mismatch_and_empty_raise(metric):
    with pytest.raises(ValueError, match="2 != 1"):
        metric(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        metric([], [])


@pytest.mark.parametrize("metric", [corpus_bleu, codexglue_bleu, rouge_l])
def test_empty_prediction_is_allowed(metric):
    score = metric(["", CAT], [CAT_REF, CAT])
    assert 0.0 <= score <= 100.0


def test_non_string_inputs_raise_type_error():
    with pytest.raises(TypeError):
        codexglue_bleu("a prediction", "a reference")  # a bare str, not a list
    with pytest.raises(TypeError):
        codexglue_bleu([None], ["a"])


def test_bleu_and_rouge_score_quietly(caplog):
    """Predictions ending in " ." (what most docstring models print) score as with sacrebleu's
    defaults but without its "tokenized period" warning, and rouge_score's absl INFO line stays out
    of peftlab's INFO log."""
    import logging

    import sacrebleu

    from peftlab.lab.env import configure_logging
    from peftlab.evaluate.metrics import corpus_bleu, rouge_l

    configure_logging()
    preds = [f"Return the value {i} ." for i in range(120)]
    refs = [f"Return the value {i}." for i in range(120)]
    plain = sacrebleu.corpus_bleu(preds, [refs]).score  # warns
    caplog.clear()
    with caplog.at_level(logging.INFO):
        score = corpus_bleu(preds, refs)
        rouge_l(preds[:3], refs[:3])
    assert score == plain
    assert not [r for r in caplog.records if "tokenized period" in r.getMessage() or "default tokenizer" in r.getMessage()]
