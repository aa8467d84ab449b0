"""Answer metrics and recall@k on hand-computed cases."""

import math

import pytest

from clara_lite.model.evaluation import (
    cover_exact_match,
    evaluate,
    exact_match,
    f1_score,
    normalize_answer,
    paired_bootstrap,
    per_question,
    recall_at_k,
    recovered_share,
)
from clara_lite.serve.compare import Comparison, recovery
from clara_lite.serve.report import markdown_table


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Cat", "cat"),
        ("  a  quick,  brown   fox!! ", "quick brown fox"),
        ("An apple; the end.", "apple end"),
        ("theater", "theater"),  # articles only as whole words
        ("U.S.A.", "usa"),
        ("True", "yes"),
        ("False", "no"),
        ("true", "true"),  # upstream maps only the exact Python spellings
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_with_articles_punctuation_and_lists():
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("Eiffel Tower", "Tower Eiffel") == 0.0
    assert exact_match("Paris", ["London", "paris!"]) == 1.0
    assert exact_match("Paris", ("London", "Rome")) == 0.0
    assert exact_match("yes", "True") == 1.0


def test_cover_exact_match():
    assert cover_exact_match("It was Paris, France.", "Paris") == 1.0
    assert cover_exact_match("France", "Paris France") == 0.0
    assert cover_exact_match("in Paris France", ["London", "the Paris"]) == 1.0


def test_f1_score_numbers():
    assert f1_score("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert f1_score("cat", "cat sat down") == pytest.approx(0.5)  # p=1, r=1/3
    assert f1_score("dog", "cat") == 0.0
    assert f1_score("Cat sat.", "the cat sat") == 1.0
    # repeated tokens count once per match: p=1/3, r=1 -> 0.5
    assert f1_score("cat cat cat", "cat") == pytest.approx(0.5)
    # max over acceptable answers
    assert f1_score("cat sat", ["dog", "cat sat down"]) == pytest.approx(0.8)


def test_f1_yes_no_gets_no_partial_credit():
    assert f1_score("no way", "no") == 0.0
    assert f1_score("no", "no way") == 0.0
    assert f1_score("yes", "yes") == 1.0
    assert f1_score("False", "no") == 1.0
    assert f1_score("noanswer", "some answer") == 0.0


def test_empty_gold_list_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        exact_match("x", [])


def test_recall_at_k():
    pos = [[0, 2], [1], []]
    pred = [[2, 1, 0], [0, 1, 2], [0, 1, 2]]
    # sample 1: @1 {2} -> 1/2, @2 {2,1} -> 1/2, @3 -> 1; sample 2: @1 -> 0, @2 -> 1; sample 3 skipped
    assert recall_at_k(pos, pred, 1) == pytest.approx(0.25)
    assert recall_at_k(pos, pred, 2) == pytest.approx(0.75)
    assert recall_at_k(pos, pred, 3) == pytest.approx(1.0)
    assert recall_at_k([[0]], [[0]], 1) == 1.0
    assert recall_at_k([[0, 0]], [[1, 0]], 2) == 1.0  # duplicates in gold count once


def test_recall_at_k_edges():
    assert recall_at_k([[], []], [[0], [1]], 1) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k([[0]], [[0]], 0)
    with pytest.raises(ValueError, match="prediction lists"):
        recall_at_k([[0]], [], 1)


def test_evaluate():
    result = evaluate(
        ["the cat sat", "Paris", "It was Rome", "yes"],
        ["cat sat down", ["paris", "Paris, France"], "Rome", "True"],
    )
    assert result["count"] == 4
    assert result["em"] == pytest.approx((0 + 1 + 0 + 1) / 4)
    assert result["cover_em"] == pytest.approx((0 + 1 + 1 + 1) / 4)
    # "It was Rome" vs "Rome": p=1/3, r=1 -> 0.5
    assert result["f1"] == pytest.approx((0.8 + 1 + 0.5 + 1) / 4)


def test_evaluate_empty_and_mismatched():
    result = evaluate([], [])
    assert result == {"em": 0.0, "cover_em": 0.0, "f1": 0.0, "count": 0}
    assert not any(math.isnan(v) for v in result.values())
    with pytest.raises(ValueError, match="golds"):
        evaluate(["a"], [])


def test_paired_bootstrap_interval_brackets_the_mean_difference_and_shrinks_with_more_questions():
    assert paired_bootstrap([0.0] * 5, [1.0] * 5) == (1.0, 1.0, 1.0)
    a = [0, 1, 0, 1, 1, 0, 0, 1, 0, 0]
    b = [1, 1, 0, 1, 1, 1, 0, 1, 1, 0]  # b wins 3 questions, never loses
    mean, lo, hi = paired_bootstrap(a, b)
    assert mean == pytest.approx(0.3) and 0.0 <= lo < mean < hi <= 0.7
    _, lo100, hi100 = paired_bootstrap(a * 10, b * 10)
    assert lo100 > 0 and hi100 - lo100 < hi - lo
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b)  # seeded: the same interval every time
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_bootstrap([1.0], [1.0, 0.0])


def test_recovered_share_is_the_gain_over_closed_book_as_a_part_of_text_rags_with_a_seeded_interval():
    closed = [0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
    text = [1, 1, 1, 1, 0, 1, 1, 0, 1, 0]  # text RAG adds 5 questions
    half = [1, 0, 1, 1, 0, 0, 1, 0, 1, 0]  # the system gets 3 of them
    share, lo, hi = recovered_share(closed, text, half)
    assert share == pytest.approx(0.6) and 0.0 <= lo < share < hi <= 1.0
    assert recovered_share(closed, text, half) == (share, lo, hi)  # seeded
    _, lo10, hi10 = recovered_share(closed * 10, text * 10, half * 10)
    assert hi10 - lo10 < hi - lo
    assert recovered_share(closed, text, text)[0] == 1.0 and recovered_share(closed, text, closed)[0] == 0.0
    assert math.isnan(recovered_share(closed, closed, half)[0])  # reading adds nothing: no share to give
    with pytest.raises(ValueError, match="equal, non-empty"):
        recovered_share([1], [1, 0], [0])


def test_per_question_scores_average_to_evaluate():
    preds, golds = ["Paris, France", "the cat sat", "no"], ["Paris", ["cat sat down", "dog"], "yes"]
    scored, means = per_question(preds, golds), evaluate(preds, golds)
    assert scored["cover_em"] == [1.0, 0.0, 0.0] and scored["f1"][1] == pytest.approx(0.8)
    for key in ("em", "cover_em", "f1"):
        assert sum(scored[key]) / 3 == pytest.approx(means[key])


def test_the_comparison_table_says_what_share_of_text_rags_gain_clara_recovers():
    golds = [["Paris"], ["Rome"], ["Oslo"], ["Bern"]]
    answers = {"closed-book": ["London", "Madrid", "Oslo", "Vienna"], "text-rag": ["Paris", "Rome", "Oslo", "Bern"],
               "clara": ["Paris", "Madrid", "Oslo", "Vienna"], "clara-zeroed": ["London", "Madrid", "Oslo", "Bern"]}
    result = Comparison(setting="oracle", top_k=1, questions=["q1", "q2", "q3", "q4"], golds=golds,
                        predictions=answers, scores={n: {**evaluate(a, golds), "prompt_tokens": 1.0,
                                                         "seconds_per_question": 0.1} for n, a in answers.items()})
    assert result.recovery is None and "recovers" not in markdown_table(result)  # compare() sets it
    result.recovery = recovery(result)
    found = result.recovery["em"]
    assert found["share"][0] == pytest.approx(1 / 3)  # text RAG adds 3 questions, CLaRa gets 1 of them
    assert found["over_closed_book"][0] == pytest.approx(0.25) and found["over_zeroed"][0] == pytest.approx(0.0)
    table = markdown_table(result)
    assert "| EM | 0.33 (" in table and "CLaRa - zeroed memory" in table
    assert result.to_dict()["recovery"] == result.recovery
    del answers["text-rag"]
    assert recovery(result) is None  # without text RAG there is no gain to share
