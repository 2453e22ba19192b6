"""Metrics, each computed as the reference implementation its docstring names computes it.

Text generation: corpus BLEU, CodeXGLUE smoothed BLEU-4, ROUGE-1/2/L, chrF; line completion:
CodeXGLUE's edit similarity and exact match; classification: accuracy and F1 as scikit-learn's.
Three numbers are easy to confuse, because papers all call them "BLEU":

* ``corpus_bleu``: Papineni et al. (2002) BLEU over the whole corpus, as sacrebleu computes it
  (clipped n-gram counts summed over all sentences, one brevity penalty for the corpus, '13a'
  tokenisation, case-sensitive).
* ``codexglue_bleu``: the CodeXGLUE code-to-text score (Lu et al., 2021), i.e. the smoothed
  sentence-level BLEU-4 of Lin & Och (2004) as implemented in
  ``microsoft/CodeXGLUE: Code-Text/code-to-text/evaluator/evaluator.py`` (identical to
  ``code/bleu.py`` used by their ``run.py``), averaged over sentences. For one sentence
  with hypothesis length c and reference length r (in tokens)::

      p_1 = m_1 / g_1                       (unigrams: no smoothing)
      p_n = (m_n + 1) / (g_n + 1),  n=2..4  (add-one smoothing)
      BP  = exp(min(0, 1 - (r + 1) / (c + 1)))   (note the +1s: not the usual exp(1 - r/c))
      s   = BP * (p_1 p_2 p_3 p_4) ** (1/4)

  where m_n are clipped n-gram matches and g_n = max(c - n + 1, 0). The logs are taken of
  ``count + float_info.min`` so that a zero count gives a tiny score instead of log(0).
  The result is 100 * mean(s).
* ``rouge_l``: mean ROUGE-L F-measure (Lin, 2004) from Google's ``rouge_score``, x100.

For BLEU, ROUGE and chrF every text first has its line breaks and tabs replaced by spaces: the
CodeXGLUE evaluator reads one example per line (and splits a line on tabs), so a newline inside a
prediction would otherwise have split it into two examples. None of the three tokenisers treats a
space differently from a newline, except sacrebleu's, which joins "-\\n" into nothing; we turn that
into a space too, so the three metrics see the same text. Edit similarity and exact match score the
texts as given (their evaluator reads whole lines, tabs included).
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from collections.abc import Sequence

_LINE_BREAK = re.compile(r"\r\n|[\r\n\t]")

# CodeXGLUE tokenisation, stage 1 (their ``splitPuncts``): runs of word characters, and every
# other non-space character on its own.
_WORD_OR_SYMBOL = re.compile(r"\w+|[^\w\s]")
# Stage 2 (the NIST mteval-v11a ``normalize`` they run afterwards): pad ASCII punctuation other
# than ' , - . with spaces. After stage 1 its only visible effect is to split "_" out of words
# ("max_len" -> "max _ len"); its period/comma/dash rules, "<skipped>" stripping, "-\n" joining
# and XML unescaping can never fire on stage-1 output, so they are left out.
_MTEVAL_PUNCT = re.compile(r"([!-&(-+/:-@\[-`{-~])")

_MAX_ORDER = 4  # BLEU-4
_TINY = sys.float_info.min  # added inside every log, as in the CodeXGLUE evaluator


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU on 0-100: ``sacrebleu.corpus_bleu(predictions, [references]).score``.

    Default sacrebleu settings ('13a' tokenisation, case-sensitive, exponential smoothing);
    identical to calling sacrebleu directly on single-line texts.
    """
    predictions, references = _checked(predictions, references)
    import sacrebleu

    # force: only silences sacrebleu's "lines end in a tokenized period" warning (13a splits the
    # period off either way: the score is the same), printed for nearly every docstring model
    return float(sacrebleu.corpus_bleu(predictions, [references], force=True).score)


def codexglue_bleu(predictions: list[str], references: list[str]) -> float:
    """CodeXGLUE code-to-text smoothed BLEU-4 on 0-100, the mean of per-sentence scores.

    Matches ``python evaluator/evaluator.py reference.txt < predictions.txt`` to the last bit
    on single-line texts (same tokenisation, same order of floating-point operations). The
    evaluator prints this value unrounded; their ``run.py`` logs and model-selects on
    ``round(score, 2)``, and the paper's tables report 2 decimals. We return it unrounded.

    Text is stripped and lowercased, split into word runs and single punctuation marks, then
    "_" is split off (see the module docstring). An empty prediction does *not* score 0:
    every precision term is 0/0 -> 1 by the evaluator's arithmetic, leaving
    BP = exp(-len(reference)); we keep that, as their evaluator does.
    """
    predictions, references = _checked(predictions, references)
    total = 0.0
    for prediction, reference in zip(predictions, references):
        # A plain loop, not sum(): Python >= 3.12 sums floats with compensation, which can
        # differ from the evaluator's left-to-right sum in the last bit.
        hypothesis, reference_tokens = _codexglue_tokens(prediction), _codexglue_tokens(reference)
        total += _smoothed_sentence_bleu(hypothesis, reference_tokens)
    return total * 100.0 / len(predictions)


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure on 0-100, with ``rouge_score`` and ``use_stemmer=True``.

    Stemming is on because generated summaries and docstrings often differ from the reference
    only in inflection ("Returns the values" / "Return the value"), which is a style
    difference, not missing content; it is also what the original ROUGE-1.5.5 ``-m`` runs and
    the rouge_score README use. (HF ``evaluate`` defaults to no stemming, so its numbers can be
    a little lower.) rouge_score keeps only lowercase ASCII letters and digits, so text with
    no such characters (including the empty string) scores 0, even against itself.
    """
    predictions, references = _checked(predictions, references)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    total = 0.0
    for prediction, reference in zip(predictions, references):
        total += scorer.score(reference, prediction)["rougeL"].fmeasure  # (target, prediction)
    return total * 100.0 / len(predictions)


def text_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """All three metrics, keyed ``bleu``, ``codexglue_bleu``, ``rouge_l`` (each on 0-100)."""
    return {
        "bleu": corpus_bleu(predictions, references),
        "codexglue_bleu": codexglue_bleu(predictions, references),
        "rouge_l": rouge_l(predictions, references),
    }


def classification_metrics(predicted: Sequence[int], gold: Sequence[int], n_labels: int) -> dict[str, float]:
    """Accuracy, macro-F1 over the ``n_labels`` classes and, for two classes, F1 of class 1 (each
    on 0-100). A prediction of -1 (an answer outside the label set) is wrong for every class.

    As scikit-learn computes them: ``accuracy_score(gold, predicted)``, ``f1_score(gold, predicted,
    labels=range(n_labels), average="macro", zero_division=0)`` and, for two classes,
    ``f1_score(..., pos_label=1, average="binary", zero_division=0)``, each x100."""
    if len(predicted) != len(gold):
        raise ValueError(f"predicted and gold differ in length: {len(predicted)} != {len(gold)}")
    if not gold:
        raise ValueError("no examples to score")
    correct = sum(p == g for p, g in zip(predicted, gold))
    f1s = []
    for c in range(n_labels):
        tp = sum(p == c and g == c for p, g in zip(predicted, gold))
        fp = sum(p == c and g != c for p, g in zip(predicted, gold))
        fn = sum(p != c and g == c for p, g in zip(predicted, gold))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    out = {"accuracy": 100.0 * correct / len(gold), "macro_f1": 100.0 * sum(f1s) / n_labels}
    out["f1"] = 100.0 * f1s[1] if n_labels == 2 else out["macro_f1"]
    return out


def _checked(predictions: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[str]]:
    """Validate the pair and return both with line breaks and tabs turned into spaces."""
    _validated(predictions, references)
    return [one_line(p) for p in predictions], [one_line(r) for r in references]


def _validated(predictions: Sequence[str], references: Sequence[str]) -> None:
    """Two equally long, non-empty lists of str, or TypeError / ValueError saying what is wrong."""
    for name, texts in (("predictions", predictions), ("references", references)):
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"{name} must be a list of str, got {type(texts).__name__}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"{name}[{i}] must be str, got {type(text).__name__}")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references differ in length: {len(predictions)} != {len(references)}"
        )
    if not predictions:
        raise ValueError("predictions and references are empty (length 0)")


def one_line(text: str) -> str:
    """A text with its line breaks and tabs as spaces, as every metric here scores it (module docstring)."""
    return _LINE_BREAK.sub(" ", text)


def _codexglue_tokens(text: str) -> list[str]:
    text = " ".join(_WORD_OR_SYMBOL.findall(text.strip().lower()))
    return _MTEVAL_PUNCT.sub(r" \1 ", text).split()


def _ngram_counts(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _smoothed_sentence_bleu(hypothesis: list[str], reference: list[str]) -> float:
    """Lin & Och (2004) smoothed BLEU-4 of one sentence, in [0, 1] (CodeXGLUE's variant)."""
    log_precision = 0.0
    for n in range(1, _MAX_ORDER + 1):
        reference_counts = _ngram_counts(reference, n)
        matches = sum(min(c, reference_counts[g]) for g, c in _ngram_counts(hypothesis, n).items())
        guesses = max(len(hypothesis) - n + 1, 0)
        smooth = 0 if n == 1 else 1  # unigram precision is never smoothed
        log_precision += math.log(matches + smooth + _TINY) - math.log(guesses + smooth + _TINY)
    log_brevity = min(0.0, 1 - (len(reference) + 1) / (len(hypothesis) + 1))
    return math.exp(log_precision / _MAX_ORDER + log_brevity)


# CodeXGLUE's line-completion data spells literals as placeholders; its evaluator puts them back
# before scoring (``post_process``): <NUM_LIT> -> 0, <STR_LIT> / <CHAR_LIT> -> nothing, <STR_LIT:x> -> x
_LITERAL = re.compile(r"<(STR|NUM|CHAR)_LIT:(.*?)>", re.S)


def codexglue_literals(code: str) -> str:
    """``post_process`` of CodeXGLUE's line-completion evaluator (a no-op on code without placeholders)."""
    code = code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
    for kind, value in _LITERAL.findall(code):
        code = code.replace(f"<{kind}_LIT:{value}>", value)
    return code


def fuzz_ratio(a: str, b: str) -> int:
    """``fuzzywuzzy.fuzz.ratio(a, b)`` with python-Levenshtein, the integer CodeXGLUE sums: 100 for
    equal strings (two empty ones too), 0 when one is empty, else
    ``int(round(100 * (len(a) + len(b) - d) / (len(a) + len(b))))`` with d the InDel distance
    (insertions and deletions; a substitution costs 2), computed here by ``rapidfuzz``. Python's
    ``round`` halves to even (62.5 -> 62), as fuzzywuzzy's ``intr`` does."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    from rapidfuzz.distance import Indel

    total = len(a) + len(b)
    return int(round(100 * ((total - Indel.distance(a, b)) / total)))


def edit_similarity(predictions: Sequence[str], references: Sequence[str]) -> float:
    """CodeXGLUE line completion's edit similarity on 0-100, as
    ``microsoft/CodeXGLUE: Code-Code/CodeCompletion-line/evaluator/evaluator.py`` computes it: the mean
    over rows of ``fuzz.ratio(post_process(prediction.strip()), post_process(reference))`` (fuzzywuzzy
    with python-Levenshtein; ``fuzz_ratio``), each row an integer. The reference is not stripped, as
    there; whitespace inside a text counts character by character.

    The evaluator reads one prediction per line: give each prediction as its one line (the line
    completion task cuts a generation at its first line break, where CodeXGLUE's pipeline stops
    generating). fuzzywuzzy without python-Levenshtein falls back to difflib's ratio (matching
    blocks, not edit distance) and gives other numbers; the InDel form here is the one
    python-Levenshtein and rapidfuzz compute."""
    _validated(predictions, references)
    total = 0
    for p, r in zip(predictions, references):
        total += fuzz_ratio(codexglue_literals(p.strip()), codexglue_literals(r))
    return total / len(predictions)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Percent of predictions equal to their reference token for token, CodeXGLUE line completion's EM
    (its evaluator's ``pred.split() == gt.split()`` after ``post_process``): whitespace runs and line
    breaks do not count."""
    _validated(predictions, references)
    same = sum(codexglue_literals(p.strip()).split() == codexglue_literals(r).split()
               for p, r in zip(predictions, references))
    return 100.0 * same / len(predictions)


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures on 0-100, as Google's ``rouge_score``
    (``RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)``, x100) computes them."""
    predictions, references = _checked(predictions, references)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references):
        for key, score in scorer.score(reference, prediction).items():
            totals[key] += score.fmeasure
    n = len(predictions)
    return {"rouge_1": 100.0 * totals["rouge1"] / n, "rouge_2": 100.0 * totals["rouge2"] / n,
            "rouge_l": 100.0 * totals["rougeL"] / n}


def chrf(predictions: list[str], references: list[str]) -> float:
    """Corpus chrF on 0-100 (Popović 2015), ``sacrebleu.corpus_chrf(predictions, [references]).score``
    with sacrebleu's defaults (character 6-grams, no word n-grams, beta 2)."""
    predictions, references = _checked(predictions, references)
    import sacrebleu

    return float(sacrebleu.corpus_chrf(predictions, [references]).score)
