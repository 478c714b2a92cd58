"""Measuring generated text against a reference: ROUGE, and what it misses.

When the answer is a sentence, accuracy no longer applies: two good headlines for the same
article rarely match word for word. ROUGE (Lin, 2004) counts the words a generated text
shares with a human reference:

* ROUGE-N: overlapping n-grams (ROUGE-1 words, ROUGE-2 word pairs);
* ROUGE-L: the longest common subsequence (LCS), words in the same order but not
  necessarily next to each other, so it rewards getting the order right without
  demanding contiguous phrases.

Each gives a precision (shared / generated), a recall (shared / reference) and their
harmonic mean, the F1 reported here. Words are the lower-cased runs of letters and
digits, as in the ``rouge-score`` package (Google's re-implementation of the original
ROUGE-1.5.5 Perl script) without stemming; a test compares the two.

What ROUGE misses: synonyms and paraphrases score zero ("rise" against "increase"), a
fluent but false headline can score well, and it says nothing of length or format beyond
the overlap: read examples, and report the mean length next to it.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

__all__ = ["words", "lcs_length", "rouge_n", "rouge_l", "rouge_scores"]

_NOT_WORD = re.compile(r"[^a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased runs of ASCII letters and digits: ``rouge-score``'s tokens without stemming."""
    return _NOT_WORD.sub(" ", str(text).lower()).split()


def _f1(shared: int, predicted: int, reference: int) -> float:
    if shared == 0:
        return 0.0
    precision, recall = shared / predicted, shared / reference
    return 2 * precision * recall / (precision + recall)


def rouge_n(prediction: str, reference: str, n: int = 1) -> float:
    """ROUGE-N F1: the n-grams of ``prediction`` and ``reference`` in common (counted with repeats)."""
    def grams(tokens: list[str]) -> Counter:
        return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))

    p, r = grams(words(prediction)), grams(words(reference))
    return _f1(sum((p & r).values()), sum(p.values()), sum(r.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two sequences, one row of the dynamic programme at a time.

    >>> lcs_length("man arrested after car crash".split(), "police arrest man after crash".split())
    3
    """
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of words, over the prediction's and the reference's lengths.

    >>> round(rouge_l("police arrest man after crash", "man arrested after car crash"), 4)
    0.6
    """
    p, r = words(prediction), words(reference)
    return _f1(lcs_length(p, r), len(p), len(r))


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 over pairs, and the mean lengths in words of both sides."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"rouge_scores needs as many predictions as references, at least one; got "
                         f"{len(predictions)} and {len(references)}.")
    pairs = list(zip(predictions, references))
    mean = lambda values: sum(values) / len(pairs)  # noqa: E731
    return {
        "rouge1": mean([rouge_n(p, r, 1) for p, r in pairs]),
        "rouge2": mean([rouge_n(p, r, 2) for p, r in pairs]),
        "rougeL": mean([rouge_l(p, r) for p, r in pairs]),
        "predicted_words": mean([len(words(p)) for p, _ in pairs]),
        "reference_words": mean([len(words(r)) for _, r in pairs]),
    }
