"""ftlib.generative.metrics against the rouge-score package (the original ROUGE-1.5.5 rules), without stemming."""
import pytest
from rouge_score import rouge_scorer  # the test extra installs it

from ftlib.generative.metrics import rouge_l, rouge_n, rouge_scores, words

CASES = [
    ("police arrest man after crash", "man arrested after car crash"),
    ("The cat sat on the mat", "the cat is on the mat"),
    ("UK economy grows 0.3% in third quarter", "UK economy grew by 0.3% in the third quarter, ONS says"),
    ("", "something"),
    ("something", ""),
    ("same words here", "same words here"),
    ("a a a b", "a b a a"),
    ("Brexit: what's next?", "What next for Brexit"),
    ("no overlap at all", "completely different headline"),
    ("Café prices rise — again!", "cafe prices rise again"),
]


def test_words_are_lower_cased_runs_of_letters_and_digits():
    assert words("UK's GDP grew 0.3%, ONS-says!") == ["uk", "s", "gdp", "grew", "0", "3", "ons", "says"]


@pytest.mark.parametrize("prediction, reference", CASES)
def test_equal_to_rouge_score(prediction, reference):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    # rouge-score takes (target, prediction): the reference first
    want = scorer.score(reference, prediction)
    assert rouge_n(prediction, reference, 1) == pytest.approx(want["rouge1"].fmeasure, abs=1e-12)
    assert rouge_n(prediction, reference, 2) == pytest.approx(want["rouge2"].fmeasure, abs=1e-12)
    assert rouge_l(prediction, reference) == pytest.approx(want["rougeL"].fmeasure, abs=1e-12)


def test_rouge_l_rewards_order_not_adjacency():
    assert rouge_l("a b c d", "a x b y c z d") > rouge_l("d c b a", "a x b y c z d")
    assert rouge_l("same words here", "same words here") == 1.0


def test_rouge_scores_averages_pairs_and_reports_lengths():
    scores = rouge_scores(["a b", "c d e f"], ["a b", "x"])
    assert scores["rougeL"] == pytest.approx(0.5)
    assert scores["predicted_words"] == 3.0 and scores["reference_words"] == 1.5
    with pytest.raises(ValueError, match="as many predictions as references"):
        rouge_scores(["a"], [])
