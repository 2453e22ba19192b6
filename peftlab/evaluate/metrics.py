"""Text-generation metrics: corpus BLEU, CodeXGLUE smoothed BLEU-4 and ROUGE-L.

Three numbers that are easy to confuse, because papers all call them "BLEU":

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

Every text first has its line breaks and tabs replaced by spaces: the CodeXGLUE evaluator reads
one example per line (and splits a line on tabs), so a newline inside a prediction would
otherwise have split it into two examples. None of the three tokenisers treats a space
differently from a newline, except sacrebleu's, which joins "-\\n" into nothing; we turn that
into a space too, so the three metrics see the same text.
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
    on 0-100). A prediction of -1 (an answer outside the label set) is wrong for every class."""
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
    return [one_line(p) for p in predictions], [one_line(r) for r in references]


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


def levenshtein(a: str, b: str) -> int:
    """Edit distance: the fewest single-character insertions, deletions and substitutions."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_similarity(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean of ``1 - levenshtein(p, r) / max(len(p), len(r))`` on 0-100 (two empty strings: 1),
    after collapsing whitespace runs to one space (indentation is not scored)."""
    predictions, references = _checked(predictions, references)
    total = 0.0
    for p, r in zip(predictions, references):
        p, r = " ".join(p.split()), " ".join(r.split())
        total += 1.0 - levenshtein(p, r) / max(len(p), len(r), 1)
    return 100.0 * total / len(predictions)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Percent of predictions equal to their reference after collapsing whitespace runs."""
    predictions, references = _checked(predictions, references)
    return 100.0 * sum(p.split() == r.split() for p, r in zip(predictions, references)) / len(predictions)


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures on 0-100 (``rouge_score``, stemmed, as ``rouge_l``)."""
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
    """Corpus chrF on 0-100 (Popović 2015, sacrebleu's defaults: character 6-grams, beta 2)."""
    predictions, references = _checked(predictions, references)
    import sacrebleu

    return float(sacrebleu.corpus_chrf(predictions, [references]).score)
