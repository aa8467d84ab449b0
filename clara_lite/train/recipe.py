"""Recipes are files: a run's model settings and each stage's training settings, in YAML or JSON.

A recipe holds only what it sets, under the configs' own names; everything else comes from run.json,
the hardware plan or the fields' defaults, exactly as when the same values are typed as flags::

    model:                 # ClaraConfig fields
      doc_max_length: 32
      compr_rate: 4
    train:                 # TrainConfig fields, every stage
      micro_batch_size: 8
    stage1:                # TrainConfig fields, this stage only (over ``train``)
      max_steps: 24
    example_data:          # ExampleData fields: train on the invented example world (written into the run)
      n_facts: 400

Every section, key and value is checked when the file is read, before anything is written: an unknown
key, a wrong type or a bad value is refused naming the file, the key and what is allowed. The recipes
that ship (``demo``, ``real_text``) live in ``clara_lite/recipes/`` and are found by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..core.config import ClaraConfig, ExampleData, TrainConfig, check_keys, check_types
from ..core.errors import ClaraError
from ..core.layout import sha256_file
from ..model.stages import ORDER

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SUFFIXES = (".yaml", ".yml", ".json")
SECTIONS = {"model": ClaraConfig, "train": TrainConfig, **{name: TrainConfig for name in ORDER},
            "example_data": ExampleData}


class RecipeError(ClaraError, ValueError):
    """A recipe file that cannot be used; the message names the file, the key and what is allowed."""
    code = "bad_recipe"


@dataclass(frozen=True)
class Recipe:
    """The settings a recipe file gives: ``model`` (ClaraConfig fields), ``train`` (TrainConfig fields for every
    stage), ``stages`` (TrainConfig fields per stage) and ``example_data``; ``path`` is the file."""

    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)
    example_data: ExampleData | None = None
    path: Path | None = None

    def train_options(self, stage: str) -> dict:
        """TrainConfig fields for ``stage``: the stage's own over the ones for every stage."""
        return {**self.train, **self.stages.get(stage, {})}

    def record(self) -> dict | None:
        """What run.json keeps of the recipe a stage came from."""
        return None if self.path is None else {"path": str(self.path), "sha256": sha256_file(self.path)}


def find_recipe(name: str | Path) -> Path:
    """A recipe file: ``name`` as a path, else a shipped recipe (``demo`` -> clara_lite/recipes/demo.yaml)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve()
    for suffix in ("", *SUFFIXES):
        shipped = RECIPES / f"{name}{suffix}"
        if shipped.is_file():
            return shipped
    known = sorted(p.stem for p in RECIPES.glob("*") if p.suffix in SUFFIXES)
    raise RecipeError(f"recipe {name!r}: no such file, and no shipped recipe of that name (shipped: {', '.join(known)})")


def load_recipe(name: str | Path) -> Recipe:
    """The recipe in file ``name`` (or the shipped recipe of that name), every value checked."""
    path = find_recipe(name)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml  # transformers' own dependency

            data = yaml.safe_load(text)
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError
        raise RecipeError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({err})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise RecipeError(f"{path}: unknown section {unknown[0]!r}; allowed sections: {', '.join(SECTIONS)}")
    checked = {name: _section(path, name, values) for name, values in data.items()}
    example = checked.get("example_data")
    return Recipe(model=checked.get("model", {}), train=checked.get("train", {}),
                  stages={s: checked[s] for s in ORDER if s in checked},
                  example_data=ExampleData(**example) if example is not None else None, path=path)


def _section(path: Path, name: str, values) -> dict:
    """``values`` of section ``name``, each key a field of the section's config and each value one it accepts."""
    cls = SECTIONS[name]
    values = {} if values is None else values
    where = f"{path}: {name}"
    try:
        check_keys(cls, values, where)
        check_types(cls, values, where)
        settable = {f.name for f in fields(cls) if f.metadata.get("cli", True)}
        fixed = sorted(set(values) - settable)
        if fixed:
            raise ValueError(f"{where}: {fixed[0]!r} is not a setting (it is recorded by training); "
                             f"allowed keys: {', '.join(sorted(settable))}")
        cls(**values)  # every check of the config, on these values
    except ValueError as err:
        text = str(err)
        raise RecipeError(text if text.startswith(str(path)) else f"{where}: {text}") from None
    return dict(values)
