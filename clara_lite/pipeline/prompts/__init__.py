"""Prompt templates for synthesis and image descriptions; the shipped defaults are the ``.txt`` files here.

Why files: the seeds' users tune prompts (their language, their domain, a stricter answer style)
and should not have to edit the package to do it. A prompt file is plain UTF-8 text with
``{field}`` slots; only the slots a prompt knows (``FIELDS``) are filled, so any other braces (a
JSON example in the prompt) stay as written.

For example::

    template = load("qa", "my_qa_prompt.txt")
    fill(load("summary"), text="Mount Etna is in Sicily.")[:9]
    # -> 'Summarize'
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

# prompt -> (slots it may use, slots it must have)
FIELDS = {
    "summary": ({"text"}, {"text"}),
    "qa": ({"n", "text", "language", "format"}, {"text"}),
    "image": (set(), set()),
}
_SLOT = re.compile(r"\{(\w+)\}")


def _check_name(name: str) -> None:
    if name not in FIELDS:
        raise ValueError(f"unknown prompt {name!r}; expected one of {', '.join(FIELDS)}")


def default(name: str) -> str:
    """The shipped template ``name`` (``summary``, ``qa`` or ``image``)."""
    _check_name(name)
    return resources.files(__package__).joinpath(f"{name}.txt").read_text(encoding="utf-8").rstrip()


def load(name: str, path: str | Path | None = None) -> str:
    """The template in ``path``, or the shipped one when ``path`` is None; checked for its slots."""
    _check_name(name)
    if path is None:
        return default(name)
    allowed, required = FIELDS[name]
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name} prompt file not found: {path}")
    template = path.read_text(encoding="utf-8-sig").rstrip()
    used = set(_SLOT.findall(template))
    if required - used:
        raise ValueError(f"{path}: the {name} prompt needs {', '.join('{' + f + '}' for f in sorted(required - used))}"
                         f" where the text goes (it may also use {', '.join('{' + f + '}' for f in sorted(allowed))})")
    if not template:
        raise ValueError(f"{path}: the {name} prompt file is empty")
    return template


def fill(template: str, **values) -> str:
    """``template`` with the slots named in ``values`` filled, in one pass (filled text is not re-read)."""
    return _SLOT.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)
