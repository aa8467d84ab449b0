"""Candidate documents per question: hard negatives are harder than random ones, never the positive."""

from __future__ import annotations

import pytest
from helpers import one_thread

from clara_lite.pipeline.examples import load_facts
from clara_lite.pipeline.negatives import Embedder, candidates, minilm_path, normalize


@pytest.fixture(scope="module")
def facts():
    """24 documents with known questions; the last doc's text appears twice (an exact duplicate)."""
    facts = load_facts()
    pool = [f["doc"] for f in facts] + ["  " + facts[0]["doc"].upper() + " "]  # same text, other case/spaces
    questions, positives = [], []
    for n, fact in enumerate(facts):
        for question, _ in fact["qa"]:
            questions.append(question)
            positives.append([n])
    return questions, positives, pool


@pytest.fixture(scope="module")
def embedder():
    with one_thread():  # for this module only (helpers.one_thread says why it must not stay at 1)
        yield Embedder()


def _check_rows(rows, positives, pool, k):
    for (docs, pos_index), pos in zip(rows, positives, strict=True):
        assert len(docs) == k and len(set(docs)) == k
        assert [docs[i] for i in pos_index] == pos
        negatives = [d for i, d in enumerate(docs) if i not in pos_index]
        positive_texts = {normalize(pool[p]) for p in pos}
        assert all(normalize(pool[d]) not in positive_texts for d in negatives)  # never the positive, nor a copy
        assert len({normalize(pool[d]) for d in negatives}) == len(negatives)


def test_minilm_ships_offline():
    path = minilm_path()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()


@pytest.mark.parametrize("strategy", ["random", "bm25", "mixed"])
def test_negatives_never_the_positive_and_positions_recorded(facts, strategy):
    questions, positives, pool = facts
    rows = candidates(questions, positives, pool, k=5, strategy=strategy, seed=3)
    _check_rows(rows, positives, pool, 5)
    assert rows == candidates(questions, positives, pool, k=5, strategy=strategy, seed=3)  # deterministic
    assert len({tuple(p) for _, p in rows}) > 1  # the positive is not always in the same slot


def test_embedding_hard_negatives_are_closer_than_random(facts, embedder):
    questions, positives, pool = facts
    hard = candidates(questions, positives, pool, k=4, strategy="embedding", embedder=embedder)
    rand = candidates(questions, positives, pool, k=4, strategy="random")
    bm25 = candidates(questions, positives, pool, k=4, strategy="bm25")
    _check_rows(hard, positives, pool, 4)
    q = embedder.encode(questions)  # (Q, D) unit vectors
    d = embedder.encode(pool)  # (P, D)

    def mean_cosine(rows):
        sims = [float(q[i] @ d[j]) for i, (docs, pos) in enumerate(rows) for n, j in enumerate(docs) if n not in pos]
        return sum(sims) / len(sims)

    hard_cos, rand_cos, bm25_cos = mean_cosine(hard), mean_cosine(rand), mean_cosine(bm25)
    print(f"mean question-negative cosine: embedding {hard_cos:.3f}, bm25 {bm25_cos:.3f}, random {rand_cos:.3f}")
    assert hard_cos > rand_cos + 0.03
    assert bm25_cos > rand_cos


def test_dataset_distractors_come_first_and_allowed_limits_the_pool(facts):
    questions, positives, pool = facts
    rows = candidates(questions[:3], positives[:3], pool, k=4, strategy="bm25", given=[[7, 8], [7], []],
                      allowed=range(5, 24))
    assert {7, 8} <= set(rows[0][0]) and 7 in rows[1][0]
    for docs, pos in rows:
        assert all(d >= 5 for n, d in enumerate(docs) if n not in pos)


def test_a_small_pool_gives_fewer_candidates_rather_than_the_positive_twice(caplog):
    rows = candidates(["Who?"], [[0]], ["Ann wrote it.", "ann  wrote it.", "Bob sang."], k=4, strategy="bm25")
    (docs, pos_index), = rows
    assert sorted(docs) == [0, 2] and docs[pos_index[0]] == 0
    assert "fewer than 4 candidates" in caplog.text
