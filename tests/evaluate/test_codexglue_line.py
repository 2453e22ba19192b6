"""CodeXGLUE line completion's edit similarity and exact match, on pairs worked out by hand.

The evaluator (``Code-Code/CodeCompletion-line/evaluator/evaluator.py``) sums, per row,
``fuzz.ratio(post_process(pred.strip()), post_process(gt))`` (fuzzywuzzy with python-Levenshtein: 100
for equal strings, 0 when one is empty, else ``int(round(100 * (L - d) / L))`` with L the summed
lengths and d the InDel distance, L - 2·LCS) and counts ``pred.split() == gt.split()``.
"""

from __future__ import annotations

import random

import pytest

from peftlab.evaluate.metrics import codexglue_literals, edit_similarity, exact_match, fuzz_ratio

# (prediction, reference, fuzz.ratio): LCS, L and d by hand in the comment
PAIRS = [
    ("kitten", "sitting", 62),  # LCS "ittn" = 4, L = 13, d = 5: 100 * 8/13 = 61.54 -> 62
    ("x  =  1", "x = 1", 83),  # LCS 5, L = 12, d = 2: 100 * 10/12 = 83.33 -> 83
    ("abcdefgh", "abcdeXYZ", 62),  # LCS 5, L = 16, d = 6: 100 * 10/16 = 62.5 -> 62 (half to even)
    ("abcdefgh", "abcdefgX", 88),  # LCS 7, L = 16, d = 2: 100 * 14/16 = 87.5 -> 88 (half to even)
    ("  return x \n", "return x", 100),  # the prediction is stripped: equal
    ("x", " x", 67),  # the reference is not: LCS 1, L = 3, d = 1: 100 * 2/3 = 66.67 -> 67
    ("", "", 100),  # equal strings come first in fuzzywuzzy: 100
    ("abc", "", 0),  # then an empty one: 0
    ("", "abc", 0),
    ("return 0", "return <NUM_LIT>", 100),  # the evaluator's post_process puts literals back
]


@pytest.mark.parametrize("prediction,reference,ratio", PAIRS)
def test_edit_similarity_of_one_row_is_fuzz_ratio_by_hand(prediction, reference, ratio):
    assert edit_similarity([prediction], [reference]) == ratio


def test_edit_similarity_is_the_mean_of_integer_rows():
    assert edit_similarity(["kitten", "abcdefgh", "x"], ["sitting", "abcdefgX", " x"]) == pytest.approx((62 + 88 + 67) / 3)


def _lcs(a: str, b: str) -> int:
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if ca == cb else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def test_fuzz_ratio_is_the_indel_ratio_on_random_strings():
    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("ab c") for _ in range(rng.randint(1, 12)))
        b = "".join(rng.choice("ab c") for _ in range(rng.randint(1, 12)))
        total = len(a) + len(b)
        want = 100 if a == b else int(round(100 * (total - (total - 2 * _lcs(a, b))) / total))
        assert fuzz_ratio(a, b) == want, (a, b)


def test_codexglue_literals_as_the_evaluators_post_process():
    assert codexglue_literals("f(<NUM_LIT>, '<STR_LIT>', <CHAR_LIT>)") == "f(0, '', )"
    assert codexglue_literals("x = <STR_LIT:hello> + <NUM_LIT:42>") == "x = hello + 42"
    assert codexglue_literals("a < b and c > d") == "a < b and c > d"


def test_exact_match_compares_tokens():
    assert exact_match(["return  x", "return y", " return x\n"], ["return x", "return x", "return x"]) == pytest.approx(200 / 3)
    assert exact_match(["return 0"], ["return <NUM_LIT>"]) == 100.0


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="differ in length"):
        edit_similarity(["a"], [])
    with pytest.raises(TypeError, match=r"predictions\[0\] must be str"):
        exact_match([None], ["a"])
