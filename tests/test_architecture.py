"""The package's shape: imports run one way (import-linter's contract in pyproject.toml), no module
imports itself back through others, and each setting has one default that every surface agrees on."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import grimp
import pytest

from clara_lite.cli import build_parser
from clara_lite.core.config import ClaraConfig, TrainConfig, bounds
from clara_lite.model.stages import ORDER, STAGES
from clara_lite.notebook.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.find_modules_directly_imported_by(node):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return out


def test_no_import_cycles():
    graph = grimp.build_graph("clara_lite")
    assert _cycles(graph) == []


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(cwd / "pyproject.toml"), "--no-cache"], cwd=cwd,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)


def test_layer_contract_holds_and_fails_on_an_upward_import(tmp_path):
    assert LINT_IMPORTS.is_file()
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy)
    shutil.copytree(ROOT / "clara_lite", copy / "clara_lite", ignore=shutil.ignore_patterns("__pycache__"))
    kept = _lint(copy)
    assert kept.returncode == 0 and "0 broken" in kept.stdout, kept.stdout + kept.stderr
    # opening a zip must not depend on training: an import from io up to train breaks the contract
    unzip = copy / "clara_lite" / "io" / "unzip.py"
    unzip.write_text(unzip.read_text() + "\nfrom ..train.run import Run  # noqa\n")
    broken = _lint(copy)
    assert broken.returncode == 1 and "BROKEN" in broken.stdout, broken.stdout + broken.stderr
    assert "clara_lite.io.unzip -> clara_lite.train.run" in broken.stdout


def _defaults(cls) -> dict:
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}


def test_one_default_per_setting():
    """The notebook settings hold overrides (None) of ClaraConfig / TrainConfig fields under the same
    names; the CLI's train flags are those fields, defaulting to None (run.json or the plan decides)."""
    homes = {**_defaults(ClaraConfig), **_defaults(TrainConfig)}
    for f in fields(Settings):
        if f.metadata.get("model") or f.metadata.get("train"):
            assert f.name in homes and f.default is None, f.name
        else:
            assert f.name not in homes or f.name == "quantization", f"{f.name} has a second default in Settings"
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    dests = {a.dest: a for a in train._actions if not isinstance(a, argparse._HelpAction)}
    for cls in (ClaraConfig, TrainConfig):
        for f in fields(cls):
            if f.metadata.get("cli", True):
                assert f.name in dests and dests[f.name].default is None, f.name
                if f.default not in (MISSING, None):  # the help names the default, or who decides it
                    assert f"(default {f.default})" in dests[f.name].help or "default:" in dests[f.name].help, f.name
    parsed = build_parser().parse_args(["train", "--stage", "stage1", "--run-dir", "r", "--top-k", "3",
                                        "--batch-size", "2", "--base", "tiny-random", "--no-sep"])
    assert (parsed.generation_top_k, parsed.micro_batch_size, parsed.base_model, parsed.sep) == (3, 2, "tiny-random", False)


def _parsers(parser, path="clara-lite"):
    """Every parser under ``parser``, with the command that reaches it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


SETTING_CLASSES = (ClaraConfig, TrainConfig)
# flags of the data commands that share a name with a setting but are another one
DATA_OWN = {"seed": "the seed of the split's shuffle and of the negatives drawn, not the training seed"}


def _field_flags() -> dict:
    """``--flag`` -> (class, field) for every config field's name and aliases."""
    out = {}
    for cls in SETTING_CLASSES:
        for f in fields(cls):
            for flag in (f"--{f.name.replace('_', '-')}", *f.metadata.get("aliases", ())):
                assert flag not in out, f"{flag} names two settings"
                out[flag] = (cls, f)
    return out


def _real_text_parser():
    spec = importlib.util.spec_from_file_location("real_text", ROOT / "benchmarks" / "real_text.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def test_every_flag_of_every_parser_that_names_a_setting_is_made_from_its_field():
    """A flag named like a config field (or its dest is one) is generated from that field: same name, type,
    choices and help, default None (the field's default, run.json or the plan decides), never a copy."""
    by_flag, names = _field_flags(), {f.name: (cls, f) for cls in SETTING_CLASSES for f in fields(cls)}
    checked = set()
    parsers = [*_parsers(build_parser()), ("benchmarks/real_text.py", _real_text_parser())]
    for where, parser in parsers:
        for action in parser._actions:
            hits = {by_flag[o] for o in action.option_strings if o.startswith("--") and o in by_flag
                    and o == f"--{by_flag[o][1].name.replace('_', '-')}"}  # a field's own flag name
            if action.dest in names:
                hits.add(names[action.dest])
            if not hits or (where.startswith("clara-lite data ") and action.dest in DATA_OWN):
                continue
            assert len(hits) == 1, (where, action.option_strings)
            cls, f = hits.pop()
            assert getattr(action, "config_field", None) == f"{cls.__name__}.{f.name}", \
                f"{where} {action.option_strings}: a hand-written copy of {cls.__name__}.{f.name}"
            assert action.dest == f.name and action.default is None, (where, f.name)
            assert tuple(action.choices or ()) == tuple(f.metadata.get("choices", ())), (where, f.name)
            assert f.metadata.get("help", "") in (action.help or ""), (where, f.name)
            checked.add((where, f.name))
    commands = {w for w, _ in checked}
    assert {"clara-lite train", "clara-lite data validate", "clara-lite data chunk", "clara-lite data build",
            "clara-lite doctor", "clara-lite demo", "benchmarks/real_text.py"} <= commands, commands
    # every settable field is a flag of train and of the benchmark
    for cls in SETTING_CLASSES:
        for f in fields(cls):
            if f.metadata.get("cli", True):
                assert ("clara-lite train", f.name) in checked and ("benchmarks/real_text.py", f.name) in checked


def test_every_form_widget_takes_default_and_bounds_from_its_field(tmp_path):
    pytest.importorskip("ipywidgets")
    from clara_lite.notebook.widgets import FORM_FIELDS, WIDGET_MAX, config_field, field_widget

    for name in FORM_FIELDS:
        f = config_field(name)
        widget = field_widget(name, None, name)
        limits = bounds(f)
        low = limits.get("low", 0) + (1 if limits.get("low_open") and "int" in str(f.type) else 0)
        assert (widget.value, widget.min, widget.max) == (f.default, low, limits.get("high", WIDGET_MAX)), name
        assert field_widget(name, 3, name).value == 3
    # the form's 0 for save_minutes is TrainConfig's "0 means none", no longer refused by a copy of the check
    assert Settings(run_name="r", save_minutes=0).save_minutes == 0
    with pytest.raises(ValueError, match="save_minutes"):
        Settings(run_name="r", save_minutes=-1)


def test_stage_facts_come_from_the_registry():
    assert [STAGES[s].previous for s in ORDER] == [None, *ORDER[:-1]]
    train = next(sub for name, sub in _parsers(build_parser()) if name == "clara-lite train")
    stage_flag = next(a for a in train._actions if a.dest == "stage")
    assert list(stage_flag.choices) == [*ORDER, "all"]  # the CLI's stage names are the registry's
    assert len({STAGES[s].data_file for s in ORDER}) == len(ORDER)
    assert [s for s in ORDER if STAGES[s].retrieves] == [ORDER[-1]]
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--stage", "stage4", "--run-dir", "r"])
