"""Token-level inputs: special tokens, encoder inputs, decoder prompts and labels.

This module takes a tokenizer and a :class:`ClaraConfig`, never the model, so data collation can
be tested (and run in DataLoader workers) on its own. The prompt texts are upstream CLaRa's,
verbatim, so official checkpoints see the prompts they were trained on.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from ..core.config import ClaraConfig

IGNORE_INDEX = -100

# the tokens add_special_tokens adds: typed into a row's text they would count as memory slots
RESERVED_TOKENS = re.compile(r"<(?:MEM\d*|AE|ENC|SEP)>")
# an image placeholder left in text (the pipeline's "[IMAGE_REF]", seed 001's legacy "[IMAGE_REF: path]"): the
# pipeline replaces each by the image's description or drops it; in training text it is noise the model would learn
IMAGE_MARKER = re.compile(r"\[IMAGE_REF(?::[^\]]*)?\]")

# Texts are cut to this many characters per token kept before tokenizing: the result is the same
# (no token is that long) and a 50 MB document costs 50 MB, not gigabytes of token objects.
MAX_CHARS_PER_TOKEN = 64

SYSTEM_QA = (
    "You are a helpful assistant. Given a document, your task is to generate some single questions to "
    "cover all key information of the document and answer them sequentially."
)
SYSTEM_PARAPHRASE = (
    "You are a helpful assistant. Your task is follow the instructions to paraphrase the background information."
)
SYSTEM_ANSWER = (
    "You are a helpful assistant. Your task is to extract relevant information from provided documents and "
    "to answer to questions as briefly as possible."
)
# the closed-book baseline: the answer instruction without documents to extract from
SYSTEM_CLOSED_BOOK = "You are a helpful assistant. Your task is to answer to questions as briefly as possible."
PARAPHRASE_INSTRUCTIONS = (
    "Background: {docs} means the same as",
    "Background: {docs} Can you put the above sentences in your own terms?",
    "Background: {docs} Please provide a reinterpretation of the preceding background text.",
    "These two expressions are equivalent in essence:\n(1) {docs}\n(2)",
    "Background: {docs} is a paraphrase of what?",
    "Background: {docs} Could you give me a different version of the background sentences above?",
    "In other words, background: {docs} is just another way of saying:",
    "You're getting across the same point whether you say background: {docs} or",
    "Background: {docs} After unpacking the ideas in the background information above, we got:",
    "Background: {docs} Please offer a restatement of the background sentences I've just read.",
    "Background: {docs}, which also means:",
    "Strip away the mystery, and you'll find background: {docs} is simply another rendition of:",
    "The essence of background: {docs} is captured again in the following statement:",
)


@dataclass(frozen=True)
class SpecialTokens:
    """Ids and strings of the tokens CLaRa adds, plus the tokenizer's own bos/eos/pad."""

    mem: tuple[str, ...]
    mem_ids: tuple[int, ...]
    ae_id: int
    enc_id: int
    sep_id: int
    bos: str
    eos: str
    pad_id: int
    added_ids: tuple[int, ...]  # every id CLaRa added (their embedding rows are saved)

    @property
    def slot(self) -> str:
        """One document's place in a prompt: its memory tokens, then <SEP>."""
        return "".join(self.mem) + "<SEP>"


def add_special_tokens(tokenizer, config: ClaraConfig) -> SpecialTokens:
    """Add <MEM..>, <AE>, <ENC>, <SEP> (upstream order, so ids match official checkpoints)."""
    n = config.n_mem
    mem = tuple(f"<MEM{i}>" for i in range(n)) if config.different_mem_tokens else ("<MEM>",) * n
    new = list(dict.fromkeys(mem)) + ["<AE>", "<ENC>", "<SEP>"]
    tokenizer.add_tokens(new, special_tokens=True)  # ids in this order, after the base vocabulary
    tokenizer.padding_side = "left"
    ids = tokenizer.convert_tokens_to_ids
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.bos_token or tokenizer.eos_token
    # Qwen-style tokenizers have no bos: upstream then uses the first additional special token.
    bos = tokenizer.bos_token or ("<|im_start|>" if "<|im_start|>" in tokenizer.get_vocab() else "")
    return SpecialTokens(
        mem=mem,
        mem_ids=tuple(ids(t) for t in mem),
        ae_id=ids("<AE>"),
        enc_id=ids("<ENC>"),
        sep_id=ids("<SEP>"),
        bos=bos,
        eos=tokenizer.eos_token or "",
        pad_id=tokenizer.pad_token_id,
        added_ids=tuple(ids(t) for t in new),
    )


def mask_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding ignored)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp_(min=0)


def encode_texts(tokenizer, tokens: SpecialTokens, config: ClaraConfig, texts: list[str]) -> dict:
    """Encoder inputs for documents (or queries): ``<ENC> bos text eos`` then the memory tokens.

    Returns ``input_ids``/``attention_mask`` (B, T+n_mem) and ``position_ids`` (None for the
    upstream layout, which pads every text to doc_max_length+3 and lets positions run from 0, unless
    ``memory_positions="segments"`` places each memory token at its segment's last position).
    """
    keep = (config.doc_max_length + 3) * MAX_CHARS_PER_TOKEN
    wrapped = [f"<ENC>{tokens.bos}{t if len(t) <= keep else t[:keep]}{tokens.eos}" for t in texts]
    upstream = config.encoder_layout == "upstream"
    enc = tokenizer(
        wrapped,
        return_tensors="pt",
        padding="max_length" if upstream else "longest",
        max_length=config.doc_max_length + 3,
        truncation=True,
        add_special_tokens=False,
    )
    b = len(texts)
    mem = torch.tensor(tokens.mem_ids, dtype=torch.long).expand(b, -1)
    input_ids = torch.cat([enc["input_ids"], mem], dim=1)
    attention_mask = torch.cat([enc["attention_mask"], torch.ones_like(mem)], dim=1)
    beside = config.memory_positions == "segments"
    position_ids = None if upstream and not beside else mask_positions(attention_mask)
    if beside:  # <ENC> at 0, bos at 1, the text from 2: segment i ends at 1 + rate*(i+1)
        position_ids[:, -mem.size(1):] = 1 + config.compr_rate * torch.arange(1, mem.size(1) + 1)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


def segment_targets(tokenizer, config: ClaraConfig, texts: list[str]) -> torch.Tensor:
    """(B, n_mem, compr_rate) token ids: memory vector i's share of its text, the i-th ``compr_rate`` tokens
    (of the first ``doc_max_length``); IGNORE_INDEX where a text is shorter. The targets of ``segment_loss_weight``.

    For example::

        segment_targets(tokenizer, ClaraConfig(doc_max_length=4, compr_rate=2), ["a b c"])
        # -> tensor([[[ 64,  275], [ 272, -100]]])
    """
    m, rate = config.n_mem, config.compr_rate
    out = torch.full((len(texts), m * rate), IGNORE_INDEX, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: m * rate]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out.view(len(texts), m, rate)


def _messages(system: str, user: str) -> list[dict]:
    """The system and user turns of a prompt, as chat messages."""
    return [{"role": "system", "content": system}, {"role": "user", "content": user.replace(":\\ ", ": ")}]


def _chat(tokenizer, system: str, user: str, answer: str | None) -> tuple[int, str]:
    """(prompt length in tokens, full text) through the chat template; a template without a
    system role gets the system text folded into the user turn (as upstream does)."""
    from jinja2.exceptions import TemplateError

    messages = _messages(system, user)
    try:
        prompt = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
    except TemplateError as err:
        if "System role not supported" not in str(err):
            raise
        messages = [{"role": "user", "content": system + "\n" + user}]
        prompt = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
    n_prompt = len(tokenizer.encode(prompt, add_special_tokens=False))
    if answer is None:
        return n_prompt, prompt
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": answer}],
        tokenize=False,
        add_generation_prompt=False,
        enable_thinking=False,
    )
    return n_prompt, full


def answer_prompt(tokenizer, tokens: SpecialTokens, question: str, n_docs: int, answer=None):
    """Question + n_docs compressed documents -> answer (upstream 'stage1_2' and 'stage2')."""
    user = f"Background:\n{tokens.slot * n_docs}\n\nQuestion:{question}"
    return _chat(tokenizer, SYSTEM_ANSWER, user, answer)


def _text_turns(question: str, docs=()) -> tuple[str, str]:
    if not docs:
        return SYSTEM_CLOSED_BOOK, f"Question:{question}"
    return SYSTEM_ANSWER, "Background:\n" + "\n".join(docs) + f"\n\nQuestion:{question}"


def text_answer_prompt(tokenizer, question: str, docs=()) -> tuple[int, str]:
    """The same question asked of the base model reading plain text (the text-RAG baseline), or with no
    documents at all (closed-book): CLaRa's answer prompt with each document's text where its memory
    slots would be, so the systems compared differ only in how the documents reach the decoder."""
    return _chat(tokenizer, *_text_turns(question, docs), None)


def text_answer_messages(question: str, docs=()) -> list[dict]:
    """:func:`text_answer_prompt` as chat messages, for a model behind an OpenAI-compatible endpoint.

    >>> [m["role"] for m in text_answer_messages("Who?", ["Ada lives in Paris."])]
    ['system', 'user']
    >>> text_answer_messages("Who?", ["Ada lives in Paris."])[1]["content"]
    'Background:\\nAda lives in Paris.\\n\\nQuestion:Who?'
    """
    return _messages(*_text_turns(question, docs))


def qa_prompt(tokenizer, tokens: SpecialTokens, questions, answers, n_docs: int = 1):
    """Stage1 QA: every question/answer pair of a document, answered from its memory vectors."""
    target = "\n".join(f"Question: {q}\nAnswer: {a}" for q, a in zip(questions, answers, strict=True))
    return _chat(tokenizer, SYSTEM_QA, f"Background:\n{tokens.slot * n_docs}", target)


def paraphrase_prompt(tokenizer, tokens: SpecialTokens, answer, n_docs: int = 1, rng: random.Random | None = None):
    """Stage1 paraphrase: restate the document from its memory vectors."""
    template = (rng or random).choice(PARAPHRASE_INSTRUCTIONS)
    return _chat(tokenizer, SYSTEM_PARAPHRASE, template.format(docs=tokens.slot * n_docs), answer)


def tokenize_prompts(tokenizer, texts: list[str], prompt_lens: list[int] | None, max_length: int) -> dict:
    """Left-padded decoder inputs; with ``prompt_lens``, labels that score only the answers."""
    keep = max_length * MAX_CHARS_PER_TOKEN
    enc = tokenizer(
        [t if len(t) <= keep else t[:keep] for t in texts],
        return_tensors="pt",
        padding="longest",
        add_special_tokens=False,
        truncation=True,
        max_length=max_length,
    )
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if prompt_lens is not None:
        labels = enc["input_ids"].clone()
        mask = enc["attention_mask"]
        pads = (mask == 0).sum(dim=1)
        for i, (pad, n) in enumerate(zip(pads.tolist(), prompt_lens, strict=True)):
            labels[i, : pad + n] = IGNORE_INDEX  # padding and prompt are context, not targets
        out["labels"] = labels
    return out
