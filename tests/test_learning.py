"""Acceptance: a small random model trained from scratch on CPU learns what CLaRa promises.

(a) stage2: questions about documents it never saw are answered from their 4 memory vectors alone,
    and at chance once those vectors are zeroed (the answer is not guessable from the question);
(b) stage3: the query reasoner ranks the gold document first among 8 unseen candidates.

The world of facts and the base model are in ``synthetic.py``; held-out facts are never stated by a
training document. Each learning test trains for 40-45 s on one thread of a busy 2-core machine.
"""

from __future__ import annotations

import random

import pytest
import torch
from helpers import one_thread
from synthetic import JOBS, NAMES, PLACES, learnable_model, qa_rows, retrieval_rows, split_facts, train

from clara_lite import load_base_model
from clara_lite.model.evaluation import exact_match
from clara_lite.serve.compare import CLARA, CLARA_ZEROED, compare

N_CANDIDATES = 8


@pytest.fixture(autouse=True)
def _one_thread():
    """Hidden size 64 is too small to split: on a busy 2-core machine 2 threads took 3x longer per
    step than 1 (idle workers spin). One thread also keeps the numbers independent of core count."""
    with one_thread():
        yield


def _exact_match(predictions, rows) -> float:
    return sum(exact_match(p, r.answers) for p, r in zip(predictions, rows, strict=True)) / len(rows)


def _recall_at_1(model, questions, candidates, gold) -> float:
    scores, _, _ = model.retrieve(questions, candidates)  # (B, N) cosine of query and document memory
    return (scores.argmax(-1) == gold).float().mean().item()


def test_every_word_of_the_synthetic_world_is_one_token():
    """The tests' premise: an answer (at a line start) and a document word (after a space) are one token."""
    _, tokenizer = load_base_model("tiny-random")
    for word in NAMES + PLACES + JOBS:
        for text in (word, " " + word):
            assert len(tokenizer.encode(text, add_special_tokens=False)) == 1, text


def test_stage2_answers_unseen_documents_from_their_memory_vectors():
    train_facts, test_facts = split_facts(seed=0)
    rows = qa_rows(train_facts, random.Random(0))
    test = qa_rows(test_facts[:64], random.Random(1))  # 128 questions
    assert not {r.docs[0] for r in test} & {r.docs[0] for r in rows}
    model = learnable_model(seed=0)
    assert model.config.n_mem == 4  # doc_max_length 16 / compr_rate 4

    history = train(model, "stage2", rows, steps=300, batch_size=32, lr=3e-3)
    assert history[-1]["lm_loss"] < 0.1

    questions, docs = [r.question for r in test], [list(r.docs) for r in test]
    em = _exact_match(model.generate_from_text(questions, docs, max_new_tokens=4), test)
    # the comparison harness's CLaRa and its zeroed-memory control (the demo's) on the same questions
    result = compare(model, test, [CLARA, CLARA_ZEROED], max_new_tokens=4, batch_size=len(test))
    control = result.scores[CLARA_ZEROED]["em"]  # chance: 1 of 16 places or jobs
    assert result.scores[CLARA]["em"] == em and result.predictions[CLARA] == model.generate_from_text(
        questions, docs, max_new_tokens=4)
    assert em >= 0.9, f"held-out exact match {em:.3f} (zeroed memory: {control:.3f})"
    assert control <= 0.2, f"answered {control:.3f} with the memory vectors zeroed: not read from memory"
    assert em - control >= 0.7


def test_stage3_query_reasoner_ranks_the_gold_document_first():
    train_facts, test_facts = split_facts(seed=0)
    rng = random.Random(0)
    test = retrieval_rows(test_facts, 128, random.Random(1), N_CANDIDATES)
    questions, candidates = [r.question for r in test], [list(r.docs) for r in test]
    gold = torch.tensor([r.pos_index[0] for r in test])  # (128,)
    model = learnable_model(seed=0, contrastive_weight=1.0)

    # Stage2 first, as in the real pipeline. Answering "who lives in P and works as J?" from the
    # memory vectors makes the encoder keep the name, which a question about a person is matched
    # on (trained on the place/job questions only, the encoder drops names and recall stays low).
    train(model, "stage2", qa_rows(train_facts, rng, ask_name=True), steps=150, batch_size=32, lr=5e-3)
    model.add_query_reasoner()  # what stage3 starts from: a copy of the encoder
    before = _recall_at_1(model, questions, candidates, gold)
    rows = retrieval_rows(train_facts, 250 * 16, rng, N_CANDIDATES)
    train(model, "stage3", rows, steps=250, batch_size=16, lr=5e-3)

    recall = _recall_at_1(model, questions, candidates, gold)
    assert recall >= 0.9, f"held-out Recall@1 {recall:.3f} (before stage3: {before:.3f}, chance 0.125)"
    assert before <= 0.4, f"Recall@1 {before:.3f} before stage3: ranking did not need stage3's training"
    scores, _, _ = model.retrieve(questions, candidates)
    _, topk = model.generate_from_questions(questions, candidates, max_new_tokens=1, top_k=1)  # (128, 1)
    assert torch.equal(topk[:, 0], scores.argmax(-1))
