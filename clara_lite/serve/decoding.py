"""Answering from memory vectors fast: the decoder adapter merged into a serving copy of the
weights, the fixed start of the prompt prefilled once, questions decoded in batches.

Why: from an index, a question costs a short prefill and 16-64 decoding steps, and on a small
model each step is dominated by fixed costs. Through PEFT every linear layer runs its LoRA branch
beside the base weight (three matmuls instead of one); merged into a copy, a step costs what the
base costs. The chat template's system turn and "Background:" are the same for every question:
their keys and values are computed once per batch size and cropped back after each use.

Greedy decoding as ``ClaraModel.generate_from_compressed_documents_and_questions`` does it (same
prompt, same stop tokens): tests check the answers are the same.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..model import inputs

log = logging.getLogger(__name__)


@dataclass
class Generation:
    texts: list[str]
    prompt_tokens: list[int]  # per question, the fixed prefix included
    first_token_at: float  # time.perf_counter() when the first new token of the batch was known
    token_ids: list[list[int]]  # the new tokens of each question, up to and with the stop token


MERGE_HEADROOM = 1.25  # a merged copy must leave room for the prompt's activations and the KV cache


def _quantized(model) -> bool:
    return bool(model.config.quantization) or bool(getattr(model.causal_lm, "is_quantized", False))


def merge_choice(model, free_bytes: int | None = None) -> tuple[bool, str]:
    """Whether to merge the decoder adapter into a serving copy, and why, in one line for the output.

    The copy costs the base's weights once more: on a GPU it is made only when the free memory
    (``free_bytes``, else what CUDA reports) holds it with :data:`MERGE_HEADROOM`; a 4B model in fp16 on
    a T4 would need two copies (~16 GB). On a CPU it is always made. Unmerged answers are the same,
    each step a little slower (the LoRA branch runs beside each base weight)."""
    if _quantized(model):
        return False, "decoder adapter unmerged: a 4/8-bit base cannot hold a merged adapter (same answers)"
    weight = model.lm.get_input_embeddings().weight
    if free_bytes is None and weight.device.type == "cuda":
        free_bytes = torch.cuda.mem_get_info(weight.device)[0]
    if free_bytes is None:
        return True, f"decoder adapter merged into a serving copy (on {weight.device.type})"
    need = sum(p.numel() * p.element_size() for p in model.causal_lm.parameters())
    gb = f"~{need / 1e9:.1f} GB copy, {free_bytes / 1e9:.1f} GB free"
    if free_bytes >= need * MERGE_HEADROOM:
        return True, f"decoder adapter merged into a serving copy ({gb})"
    return False, f"decoder adapter unmerged: no room for a merged copy ({gb}); same answers, slower steps"


class ServingDecoder:
    """Greedy answers from already compressed documents, for one :class:`ClaraModel`.

    ``merge``: None (default) merges the decoder adapter into a copy of the weights when
    :func:`merge_choice` says there is room (``free_bytes`` stands for the GPU's free memory in tests);
    ``how`` says which, and why. ``prefix_cache``: reuse the fixed start of the prompt. ``dtype``: the
    merged copy's weights (default the model's; :func:`~clara_lite.core.hardware.decide_serving` picks it).
    """

    def __init__(self, model, *, merge: bool | None = None, prefix_cache: bool = True,
                 free_bytes: int | None = None, dtype: torch.dtype | None = None):
        self.model = model
        if merge is None:
            self.merged, self.how = merge_choice(model, free_bytes)
        else:
            self.merged = merge
            self.how = "decoder adapter " + ("merged into a serving copy" if merge else "unmerged") + " (as asked)"
        if self.merged and _quantized(model):
            raise ValueError("a quantized base cannot hold a merged adapter: use merge=False")
        log.info("%s", self.how)
        model.eval()
        if self.merged:
            self.lm = copy.deepcopy(model.lm).merge_and_unload(adapter_names=["decoder"], progressbar=False)
            self.lm.eval()
            if dtype is not None and dtype != self.lm.dtype:
                self.lm.to(dtype)
                self.how += f", {str(dtype).removeprefix('torch.')}"
        else:
            self.lm = model.causal_lm
        eos = model.causal_lm.generation_config.eos_token_id
        eos = eos if eos is not None else model.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list | tuple) else [eos])
        self.prefix_cache = prefix_cache
        # transformers renamed past_key_values to cache (5.2x); the old name warns, then goes
        self._cache_kw = "cache" if "cache" in inspect.signature(self.lm.forward).parameters else "past_key_values"
        self._prefixes: dict[int, object] = {}
        self.prefix_ids: list[int] = self._prefix_ids() if prefix_cache else []

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    def _context(self):
        return contextlib.nullcontext() if self.merged else self.model.adapter("decoder")

    def _prompt_ids(self, question: str, n_docs: int) -> list[int]:
        m = self.model
        text = inputs.answer_prompt(m.tokenizer, m.tokens, question, n_docs)[1]
        ids = m.tokenizer(text, add_special_tokens=False, truncation=True,
                          max_length=m.config.max_decoder_length)["input_ids"]
        return list(ids)

    def _prefix_ids(self) -> list[int]:
        """Tokens before the first memory slot, if every question's prompt starts with them."""
        mem = set(self.model.tokens.mem_ids)
        a, b = self._prompt_ids("What?", 1), self._prompt_ids("Who is it, and where?", 2)
        first = next(i for i, t in enumerate(a) if t in mem)
        return a[:first] if b[:first] == a[:first] else []

    def _prefix(self, batch: int):
        """A copy of the KV cache of the fixed prefix for ``batch`` rows (computed once per batch size)."""
        from transformers import DynamicCache

        cache = self._prefixes.get(batch)
        if cache is None:
            ids = torch.tensor([self.prefix_ids] * batch, device=self.device)
            cache = DynamicCache(config=self.lm.config)
            with self._context():
                self.lm(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
            self._prefixes[batch] = cache
        return copy.deepcopy(cache)

    def _take(self, rows: list[int], tokens: list[int], out_tokens: list[list[int]], done: list[bool],
              stop_at_eos: bool, on_token: Callable[[int, int], None] | None) -> None:
        """Append each still-decoding row's new token, mark the rows that stopped, stream the tokens."""
        for i, t in zip(rows, tokens, strict=True):
            out_tokens[i].append(t)
            done[i] = stop_at_eos and t in self.eos
            if on_token is not None:
                on_token(i, t)

    @torch.no_grad()
    def generate(self, questions: list[str], memory: torch.Tensor, k: int, max_new_tokens: int = 64, *,
                 stop_at_eos: bool = True, on_token: Callable[[int, int], None] | None = None) -> Generation:
        """Answer ``questions`` (B) from ``memory`` (B*k, M, H): k compressed documents per question.
        ``stop_at_eos=False`` decodes exactly ``max_new_tokens`` (benchmarks compare equal work).
        ``on_token(i, token_id)`` is called for each new token of question i as soon as it is decoded
        (streaming; an exception it raises stops the decoding)."""
        from transformers import DynamicCache

        m, b = self.model, len(questions)
        if memory.shape[0] != b * k:
            raise ValueError(f"{memory.shape[0]} memory blocks do not split into {b} questions x {k}")
        prompts = [self._prompt_ids(q, k) for q in questions]
        p = len(self.prefix_ids)
        if p and any(ids[:p] != self.prefix_ids for ids in prompts):
            p = 0  # a template that moved: no shared prefix this time
        suffixes = [ids[p:] for ids in prompts]
        width = max(len(s) for s in suffixes)
        pad = m.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in suffixes], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes], device=self.device)
        embeds = m.decoder_embeds(ids, memory.to(self.device)).to(self.lm.dtype)
        cache = self._prefix(b) if p else DynamicCache(config=self.lm.config)
        full_mask = torch.cat([torch.ones(b, p, dtype=mask.dtype, device=self.device), mask], dim=1)
        positions = p + inputs.mask_positions(mask)
        out_tokens: list[list[int]] = [[] for _ in range(b)]
        done = [False] * b
        first_token_at = 0.0
        kw = {self._cache_kw: cache, "use_cache": True, "logits_to_keep": 1}
        with self._context():
            out = self.lm(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions, **kw)
            for step in range(max_new_tokens):
                nxt = out.logits[:, -1].argmax(-1)
                if step == 0:
                    first_token_at = time.perf_counter()
                live, new = [i for i in range(b) if not done[i]], nxt.tolist()
                self._take(live, [new[i] for i in live], out_tokens, done, stop_at_eos, on_token)
                if all(done) or step == max_new_tokens - 1:
                    break
                nxt = torch.where(torch.tensor(done, device=self.device), torch.full_like(nxt, pad), nxt)
                full_mask = torch.cat([full_mask, torch.ones(b, 1, dtype=full_mask.dtype, device=self.device)], 1)
                positions = positions[:, -1:] + 1
                out = self.lm(input_ids=nxt[:, None], attention_mask=full_mask, position_ids=positions, **kw)
        texts = [t.strip() for t in m.tokenizer.batch_decode(out_tokens, skip_special_tokens=True)]
        return Generation(texts, [len(x) for x in prompts], first_token_at, out_tokens)


class TextStream:
    """The text of one answer as its tokens arrive, in pieces whose concatenation is the answer's text
    (``Generation.texts``: decoded without special tokens, stripped).

    Why not decode each token alone: a character can be split over tokens (a byte-level BPE emits
    half of an "é"), and a word's leading space belongs to the token after it. So the whole answer
    so far is decoded again, and a piece is given out only up to its last complete character and
    without trailing spaces (the next piece starts with them).

    >>> class Chars:  # a tokenizer whose tokens are characters
    ...     def decode(self, ids, skip_special_tokens=True): return "".join(map(chr, ids))
    >>> stream = TextStream(Chars())
    >>> [stream.push(ord(c)) for c in " Hi there"]
    ['', 'H', 'i', '', ' t', 'h', 'e', 'r', 'e']
    >>> stream.finish("Hi there")
    ''
    """

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.sent = tokenizer, [], ""

    def push(self, token_id: int) -> str:
        """The new text after ``token_id`` (possibly empty)."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
        return "" if text.endswith("\ufffd") else self._advance(text)

    def finish(self, text: str) -> str:
        """What is left of ``text``, the answer's own text, once decoding is done."""
        return self._advance(text)

    def _advance(self, text: str) -> str:
        if not text.startswith(self.sent):  # a tokenizer whose decoding of a prefix is no prefix: say nothing more
            log.warning("streamed text %r is not a prefix of %r", self.sent, text)
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta
