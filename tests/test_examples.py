"""The example world: invented people, balanced held-out answers, held-out documents in no training file."""

from __future__ import annotations

import json
from collections import Counter

from clara_lite.pipeline.examples import load_facts, load_world, write_example_data


def test_people_are_invented_and_every_answer_is_in_their_document():
    world = load_world()
    facts = load_facts(176)
    assert len({f["doc"] for f in facts}) == 176
    for fact in facts:
        name = fact["qa"][0][0].removeprefix("Where does ").removesuffix(" live?")
        first, last = name.split()
        assert first in world["first_names"] and last in world["surnames"]
        for question, answer in fact["qa"]:
            assert name in question and answer in fact["doc"]
    assert load_facts(176) == facts  # seeded: every run writes the same files


def test_each_block_of_sixteen_is_balanced_so_a_constant_guess_scores_little():
    facts = load_facts(176)
    for start in range(0, 176, 16):
        block = facts[start : start + 16]
        for k, top in ((0, 1), (1, 1), (2, 2)):  # 16 places, 16 jobs once each; 8 colours twice each
            assert Counter(f["qa"][k][1] for f in block).most_common(1)[0][1] == top


def test_held_out_documents_appear_in_no_training_file(tmp_path):
    paths = write_example_data(tmp_path, n_facts=48, heldout=16, n_candidates=4)
    rows = {name: [json.loads(line) for line in path.read_text().splitlines()] for name, path in paths.items()}
    held_docs = {r["docs"][r["pos_index"][0]] for r in rows["heldout"]}
    assert len(held_docs) == 16 and len(rows["heldout"]) == 48
    for name in ("stage1", "stage2", "stage3"):
        seen = {d for r in rows[name] for d in r["docs"]}
        assert not seen & held_docs, name
    assert all(len(r["docs"]) == 4 for r in rows["stage2"] + rows["heldout"])
    default = write_example_data(tmp_path / "default")  # the notebooks' example data: 20 people to train on
    assert len(default["stage1"].read_text().splitlines()) == 40
