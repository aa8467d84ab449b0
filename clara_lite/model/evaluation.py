"""Answer and retrieval metrics: SQuAD-style EM / cover-EM / F1 and recall@k.

Why our own copy: upstream CLaRa scores with these exact rules (SQuAD normalisation plus a
``True``/``False`` -> ``yes``/``no`` mapping), so numbers are comparable with the paper only if we
normalise the same way. Pure Python, no torch: it can score predictions read back from a file.

>>> evaluate(["The Eiffel Tower."], [["eiffel tower", "tour eiffel"]])
{'em': 1.0, 'cover_em': 1.0, 'f1': 1.0, 'count': 1}
"""

from __future__ import annotations

import logging
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

Gold = str | Sequence[str]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
# Upstream maps Python-style booleans before normalising (its ``bool_mapping``), so a model
# answering "True" matches a gold "yes".
_BOOL_MAPPING = {"True": "yes", "False": "no"}
# F1 gives no partial credit around these: "no" vs "no way" is a wrong answer, not half right.
_CLOSED_ANSWERS = frozenset({"yes", "no", "noanswer"})


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace; map True/False to yes/no.

    >>> normalize_answer("  The Cat, sat! ")
    'cat sat'
    >>> normalize_answer("True")
    'yes'
    """
    text = _BOOL_MAPPING.get(text.strip(), text)
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _as_golds(gold: Gold) -> list[str]:
    """One gold string or several acceptable ones -> a non-empty list."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not golds:
        raise ValueError("gold answers must not be an empty list")
    return golds


def _best(metric: Callable[[str, str], float], pred: str, gold: Gold) -> float:
    """The best score over all acceptable gold answers."""
    return max(metric(pred, g) for g in _as_golds(gold))


def _exact(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def _cover(pred: str, gold: str) -> float:
    pred_tokens = set(normalize_answer(pred).split())
    return float(all(tok in pred_tokens for tok in normalize_answer(gold).split()))


def _f1(pred: str, gold: str) -> float:
    pred_norm, gold_norm = normalize_answer(pred), normalize_answer(gold)
    if (pred_norm in _CLOSED_ANSWERS or gold_norm in _CLOSED_ANSWERS) and pred_norm != gold_norm:
        return 0.0
    pred_tokens, gold_tokens = pred_norm.split(), gold_norm.split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(pred: str, gold: Gold) -> float:
    """1.0 if the normalised prediction equals a normalised gold answer, else 0.0.

    >>> exact_match("the Cat", ["dog", "cat"])
    1.0
    """
    return _best(_exact, pred, gold)


def cover_exact_match(pred: str, gold: Gold) -> float:
    """1.0 if every token of a normalised gold answer appears among the prediction's tokens.

    Generative readers pad answers with words ("It was Paris."); upstream calls this ``acc``.

    >>> cover_exact_match("It was Paris, France.", "Paris")
    1.0
    """
    return _best(_cover, pred, gold)


def f1_score(pred: str, gold: Gold) -> float:
    """Token-level F1 between normalised prediction and gold, best over gold answers.

    >>> f1_score("the cat sat", "cat sat down")
    0.8
    """
    return _best(_f1, pred, gold)


def recall_at_k(pos_indices: Sequence[Sequence[int]], pred_indices: Sequence[Sequence[int]], k: int) -> float:
    """Mean over samples with a positive of |gold ∩ pred[:k]| / |gold|.

    Samples without any positive document are skipped rather than counted as 0 (upstream counts
    them, which drags recall down for data with partial ``pos_index`` labels); if no sample has a
    positive the result is 0.0.

    >>> recall_at_k([[0, 2], [1]], [[2, 1], [0, 1]], k=1)
    0.25
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(pos_indices) != len(pred_indices):
        raise ValueError(f"{len(pos_indices)} positive lists but {len(pred_indices)} prediction lists")
    recalls = []
    for gold, pred in zip(pos_indices, pred_indices, strict=True):
        gold_set = set(gold)
        if gold_set:
            recalls.append(len(gold_set & set(pred[:k])) / len(gold_set))
    if not recalls:
        log.warning("recall@%d: no sample has a positive document; returning 0.0", k)
        return 0.0
    return sum(recalls) / len(recalls)


def evaluate(predictions: Sequence[str], golds: Sequence[Gold]) -> dict[str, float]:
    """Mean EM, cover-EM and F1 over paired predictions and golds, plus ``count``.

    Each gold may be one string or a list of acceptable answers. An empty input scores 0.0.

    >>> evaluate(["yes", "Paris"], ["True", "London"])
    {'em': 0.5, 'cover_em': 0.5, 'f1': 0.5, 'count': 2}
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} golds")
    n = len(predictions)
    scores = {"em": 0.0, "cover_em": 0.0, "f1": 0.0}
    for pred, gold in zip(predictions, golds, strict=True):
        scores["em"] += exact_match(pred, gold)
        scores["cover_em"] += cover_exact_match(pred, gold)
        scores["f1"] += f1_score(pred, gold)
    result: dict[str, float] = {name: total / n if n else 0.0 for name, total in scores.items()}
    result["count"] = n
    return result


def per_question(predictions: Sequence[str], golds: Sequence[Gold]) -> dict[str, list[float]]:
    """Each question's EM, cover-EM and F1 (what :func:`evaluate` averages), for paired statistics.

    >>> per_question(["Paris", "no idea"], ["Paris", "London"])
    {'em': [1.0, 0.0], 'cover_em': [1.0, 0.0], 'f1': [1.0, 0.0]}
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} golds")
    pairs = list(zip(predictions, golds, strict=True))
    return {"em": [exact_match(p, g) for p, g in pairs], "cover_em": [cover_exact_match(p, g) for p, g in pairs],
            "f1": [f1_score(p, g) for p, g in pairs]}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, samples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """(mean of b - a, low, high): the difference of two systems' per-question scores on the same questions
    and its percentile interval over ``samples`` resamplings of the questions (both systems resampled
    together, so what the questions share cancels).

    >>> paired_bootstrap([0, 1, 1, 0], [0, 1, 1, 0])
    (0.0, 0.0, 0.0)
    """
    import numpy as np

    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired scores need two equal, non-empty lists, got {len(a)} and {len(b)}")
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(diff), size=(samples, len(diff)))
    means = diff[picks].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(diff.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def evaluate_model(model, examples, *, retrieve: bool, batch_size: int = 8, max_new_tokens: int = 32,
                   top_k: int | None = None) -> dict:
    """Answer stage2/3 rows with ``model`` and score them.

    ``retrieve=False`` answers from all of each row's docs (``generate_from_text``);
    ``retrieve=True`` lets the query reasoner pick top-k first (``generate_from_questions``) and
    adds Recall@1 and Recall@k on rows that carry ``pos_index``.
    """
    predictions, picked = [], []
    for start in range(0, len(examples), batch_size):
        rows = examples[start : start + batch_size]
        questions = [r.question for r in rows]
        docs = [list(r.docs) for r in rows]
        if retrieve:
            answers, idx = model.generate_from_questions(questions, docs, max_new_tokens, top_k=top_k)
            picked.extend(idx.tolist())
        else:
            answers = model.generate_from_text(questions, docs, max_new_tokens)
        predictions.extend(answers)
    result = evaluate(predictions, [list(r.answers) for r in examples])
    if retrieve and any(r.pos_index for r in examples):
        pos = [list(r.pos_index) for r in examples]
        k = len(picked[0]) if picked else 1
        result["recall_at_1"] = recall_at_k(pos, picked, 1)
        result[f"recall_at_{k}"] = recall_at_k(pos, picked, k)
    result["predictions"] = predictions
    return result


def recovered_share(closed: Sequence[float], reading: Sequence[float], system: Sequence[float], *,
                    samples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(share, low, high): how much of what reading the text adds over closed-book ``system`` recovers,
    ``(system - closed) / (reading - closed)`` over the same questions' scores, with its percentile interval
    over ``samples`` resamplings of the questions (all three resampled together). Resamplings where reading
    adds nothing are left out of the interval; ``nan`` when it adds nothing at all.

    >>> recovered_share([0, 0, 0, 0], [1, 1, 0, 1], [1, 0, 0, 1])
    (0.6666666666666666, 0.0, 1.0)
    """
    import numpy as np

    cols = [np.asarray(x, dtype=float) for x in (closed, reading, system)]
    if len({len(c) for c in cols}) != 1 or not len(cols[0]):
        raise ValueError(f"three equal, non-empty score lists needed, got {[len(c) for c in cols]}")
    closed_, reading_, system_ = cols

    def share(gain, full):
        return gain / full if full > 0 else float("nan")

    point = share(system_.mean() - closed_.mean(), reading_.mean() - closed_.mean())
    picks = np.random.default_rng(seed).integers(0, len(closed_), size=(samples, len(closed_)))
    base = closed_[picks].mean(axis=1)
    full, gain = reading_[picks].mean(axis=1) - base, system_[picks].mean(axis=1) - base
    ratios = gain[full > 0] / full[full > 0]
    if not len(ratios):
        return float(point), float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    return float(point), float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))
