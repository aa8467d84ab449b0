"""Recipes are files: ``clara-lite train --config`` trains what the code that reads the same file trains, and a
bad recipe is refused before anything is written, naming the file, the key and what is allowed."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
from safetensors.torch import load_file

from clara_lite.cli import main
from clara_lite.core.config import ClaraConfig, ExampleData, TrainConfig
from clara_lite.demo import run_demo
from clara_lite.model.stages import ORDER
from clara_lite.train.recipe import RECIPES, SECTIONS, RecipeError, load_recipe

SHIPPED = sorted(RECIPES.glob("*.yaml"))


def test_shipped_recipes_load_and_every_key_is_one_config_field():
    assert {p.stem for p in SHIPPED} >= {"demo", "real_text"}
    names = {cls: {f.name for f in fields(cls)} for cls in (ClaraConfig, TrainConfig, ExampleData)}
    for path in SHIPPED:
        recipe = load_recipe(path)
        sections = {"model": recipe.model, "train": recipe.train, **recipe.stages}
        for section, values in sections.items():
            assert set(values) <= names[SECTIONS[section]], (path, section)
        ClaraConfig(**recipe.model)
        for stage in ORDER:
            TrainConfig(**recipe.train_options(stage))
    demo = load_recipe("demo")
    assert demo.model["compr_rate"] == 4 and demo.train_options("stage2")["max_steps"] == 60
    assert demo.train_options("stage1")["lr"] == 2e-3 and demo.example_data == ExampleData(400, 16, 4, 1)


def _adapters(final):
    """Every tensor of a final model's adapters and added-token rows, by file and name."""
    files = [*sorted((final / "adapters").rglob("*.safetensors")), final / "added_tokens.safetensors"]
    assert len(files) > 1
    return {f"{f.relative_to(final)}:{k}": v for f in files for k, v in load_file(str(f)).items()}


def test_train_config_demo_trains_what_the_demo_trains(tmp_path):
    steps = {s: 1 for s in ORDER}
    run_demo(tmp_path / "demo", base="tiny-random", steps=steps)
    code = main(["train", "--config", "demo", "--run-dir", str(tmp_path / "cli"), "--base", "tiny-random",
                 "--max-steps", "1", "--save-steps", "1"])
    assert code == 0
    demo, cli = (json.loads((tmp_path / r / "run.json").read_text()) for r in ("demo", "cli"))
    assert demo["model"] == cli["model"]
    for stage in ORDER:
        assert demo["stages"][stage]["train"] == cli["stages"][stage]["train"], stage
        assert cli["stages"][stage]["recipe"]["path"].endswith("recipes/demo.yaml")
        assert demo["stages"][stage]["data"]["sha256"] == cli["stages"][stage]["data"]["sha256"]
        a, b = _adapters(tmp_path / "demo" / stage / "final"), _adapters(tmp_path / "cli" / stage / "final")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), stage


@pytest.mark.parametrize("text, words", [
    ("model:\n  compr_rate: 4\n  comp_rate: 3\n", ["model", "unknown ClaraConfig keys ['comp_rate']", "'compr_rate'"]),
    ("model:\n  memory_space: words\n", ["model", "memory_space", "('hidden', 'tokens')", "'words'"]),
    ("stage2:\n  lr: -1\n", ["stage2", "lr (--lr) must be a finite number > 0"]),
    ("stage1:\n  max_steps: ten\n", ["stage1", "field 'max_steps' must be an integer or null"]),
    ("stage4:\n  lr: 0.1\n", ["unknown section 'stage4'", "model, train, stage1, stage2, stage3, example_data"]),
    ("model:\n  trained_stages: [stage1]\n", ["'trained_stages' is not a setting"]),
    ("model: [1, 2\n", ["not valid YAML"]),
])
def test_a_bad_recipe_is_refused_before_anything_is_written(tmp_path, caplog, text, words):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe)
    assert str(err.value).startswith(str(recipe)), err.value
    for word in words:
        assert word in str(err.value), (word, err.value)
    run = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--run-dir", str(run)]) == 2
    assert not run.exists()


def test_an_unknown_recipe_name_lists_the_shipped_ones():
    with pytest.raises(RecipeError, match="shipped: .*demo.*real_text"):
        load_recipe("no-such-recipe")


def test_errors_have_stable_codes_and_exit_statuses():
    """Scripts tell clara_lite's errors apart by type and code; each kind stays the built-in it was."""
    from clara_lite.core.errors import ClaraError, exit_status
    from clara_lite.model.data import DataError
    from clara_lite.train.lock import RunLocked
    from clara_lite.train.trainer import OutOfMemory, TrainingDiverged, TrainingInterrupted

    kinds = {RecipeError: ("bad_recipe", 2, ValueError), DataError: ("bad_data", 2, ValueError),
             RunLocked: ("run_locked", 5, OSError), OutOfMemory: ("out_of_memory", 4, RuntimeError),
             TrainingDiverged: ("diverged", 3, RuntimeError), TrainingInterrupted: ("interrupted", 130, RuntimeError)}
    for cls, (code, status, builtin) in kinds.items():
        err = cls("message")
        assert isinstance(err, ClaraError) and isinstance(err, builtin)
        assert (err.code, exit_status(err)) == (code, status), cls
    assert exit_status(ValueError("not ours")) == 2
    codes = [c.code for c in _subclasses(ClaraError)]
    assert len(codes) == len(set(codes)), codes  # one code, one kind


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)
