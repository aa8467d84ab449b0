"""The stage registry: the three training stages as small objects, and every fact about them.

A stage knows which adapters it trains, which row it reads (parser and shape), its default
learning rate, the stage it starts from, whether it retrieves, how a batch is built and its loss.
Everything else (CLI choices, data parsing, notebook lists, pipeline file names) asks the registry;
a stage name string becomes a stage only at the edges (CLI, notebook form, foreign configs):

>>> stage = get_stage("stage1")
>>> stage.trainable, stage.previous, stage.data_file
(('encoder', 'decoder'), None, 'stage1.jsonl')

Collation takes a tokenizer and a config, never the model, so it can run in DataLoader workers.

A loss is averaged over what the whole optimizer step holds (its answer tokens, documents, queries
with a gold document: :class:`StepTotals`), not over one micro-batch, so a step run as four 1-row
micro-batches gets the same gradient as one 4-row batch (the idea behind transformers'
``num_items_in_batch``). That lets the runner pick micro-batches for memory and padding alone.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import torch

from ..core.config import ClaraConfig
from . import inputs
from .inputs import IGNORE_INDEX, SpecialTokens
from .rows import QA_SHAPE, STAGE1_SHAPE, parse_qa_row, parse_stage1_row

QUERY_REASONER = "query_reasoner"  # the adapter a retrieving stage adds


def _uniform_docs(examples) -> int:
    n = len(examples[0].docs)
    if any(len(e.docs) != n for e in examples):
        raise ValueError("all rows of a batch need the same number of docs (validate the data file)")
    return n


def _docs_and_prompts(tokenizer, tokens, config, examples, pairs) -> dict:
    """Every stage's core tensors: all rows' documents for the encoder ("enc"), and the decoder
    prompts with their answers as labels ("dec"); ``pairs`` are (prompt length, text) per row."""
    return {
        "enc": inputs.encode_texts(tokenizer, tokens, config, [d for ex in examples for d in ex.docs]),
        "dec": inputs.tokenize_prompts(tokenizer, [p[1] for p in pairs], [p[0] for p in pairs],
                                       config.max_decoder_length),
    }


def _rng_for(text: str) -> random.Random:
    """A per-row RNG keyed by the row's content: the same row gets the same paraphrase
    instruction in every epoch and after every resume."""
    return random.Random(zlib.crc32(text.encode("utf-8")))


@dataclass(frozen=True)
class StepTotals:
    """Counts over every micro-batch of one optimizer step: the denominators of its loss terms."""

    answer_tokens: int  # scored decoder positions (LM loss: mean over these)
    docs: int  # compressed documents (MSE: mean over these)
    queries_with_positive: int = 0  # stage3 rows with a pos_index (retrieval loss / Recall@1)

    @classmethod
    def of(cls, batches: list[dict]) -> StepTotals:
        return cls(
            answer_tokens=sum(int((b["dec"]["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches),
            docs=sum(int(b["enc"]["input_ids"].shape[0]) for b in batches),
            queries_with_positive=sum(int((b["pos_index"] >= 0).any(-1).sum()) for b in batches if "pos_index" in b),
        )


def _part(mean: torch.Tensor, count: int, total: int) -> torch.Tensor:
    """A batch's contribution to a step-wide mean: its own mean weighted by count / total."""
    return mean * (count / max(total, 1))


@dataclass(frozen=True)
class Collator:
    """Turns a list of examples into tensors for ``stage``."""

    stage: Stage
    tokenizer: object
    tokens: SpecialTokens
    config: ClaraConfig

    def __call__(self, examples) -> dict:
        return self.stage.collate(self.tokenizer, self.tokens, self.config, examples)


class Stage:
    """Base protocol. Subclasses set the facts below and implement ``collate`` and ``loss``."""

    name: str = ""
    trainable: tuple[str, ...] = ()  # adapters this stage trains
    default_lr: float = 1e-4
    previous: str | None = None  # the stage whose final model this one starts from
    retrieves: bool = False  # trains (and then serves with) a query reasoner
    row: str = ""  # the kind of row it reads: "pretrain" (stage1's QA/paraphrase rows) or "qa"
    row_shape: str = ""  # what one line of its data file looks like, for messages
    exact_docs: bool = False  # rows must hold exactly top_k docs (else at least top_k)

    @staticmethod
    def parse_row(row: dict, out: list) -> object | None:
        """One JSON row -> an example, or None after appending (field, reason) problems to ``out``."""
        raise NotImplementedError

    @property
    def data_file(self) -> str:
        """The stage's file name in a data folder (``--data-dir``, the pipeline's output)."""
        return f"{self.name}.jsonl"

    def prepare(self, model) -> None:
        """Make exactly this stage's adapters trainable."""
        model.set_trainable(self.trainable)

    def collator(self, model) -> Collator:
        return Collator(self, model.tokenizer, model.tokens, model.config)

    def collate(self, tokenizer, tokens, config, examples) -> dict:
        raise NotImplementedError

    def prompt(self, tokenizer, tokens, config, example, n_docs: int) -> tuple[int, str]:
        """(tokens before the answer, full decoder text) of one row among rows of ``n_docs`` documents."""
        raise NotImplementedError

    def docs_in_prompt(self, config, n_docs: int) -> int:
        """How many documents' memory slots the decoder prompt holds for a row of ``n_docs``."""
        return n_docs

    def loss(self, model, batch, totals: StepTotals | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, metrics) of ``batch`` as its share of a step holding ``totals`` (default: the batch
        is the whole step). Losses and metrics of a step's micro-batches add up to the step's."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}: trains {', '.join(self.trainable)}>"


class _CompressAndAnswer(Stage):
    """Shared by stage1 and stage2: encoder compresses, decoder answers, both train (+ MSE)."""

    trainable = ("encoder", "decoder")

    def loss(self, model, batch, totals=None):
        own = StepTotals.of([batch])
        totals = totals or own
        memory, mse, segment = model.compress_for_training(batch["enc"])  # (B*K, M, H)
        embeds = model.decoder_embeds(batch["dec"]["input_ids"], memory)
        lm = model.decoder_loss(embeds, batch["dec"]["attention_mask"], batch["dec"]["labels"])
        lm = _part(lm, own.answer_tokens, totals.answer_tokens)
        mse = _part(mse, own.docs, totals.docs)
        total = lm + model.config.mse_weight * mse
        metrics = {"lm_loss": lm.item(), "mse_loss": mse.item()}
        if segment is not None:  # segment_loss_weight: every batch of the step has the targets
            segment = _part(segment, own.docs, totals.docs)
            total = total + model.config.segment_loss_weight * segment
            metrics["segment_loss"] = segment.item()
        return total, metrics

    def collate(self, tokenizer, tokens, config, examples):
        n_docs = _uniform_docs(examples)
        pairs = [self.prompt(tokenizer, tokens, config, ex, n_docs) for ex in examples]
        batch = _docs_and_prompts(tokenizer, tokens, config, examples, pairs)
        if config.segment_loss_weight:  # the segment loss's targets: built for training batches only, not at inference
            batch["enc"]["segments"] = inputs.segment_targets(tokenizer, config, [d for ex in examples for d in ex.docs])
        return batch


class Stage1(_CompressAndAnswer):
    """Compression pretraining: QA and paraphrase targets from compressed docs, + MSE."""

    name = "stage1"
    row = "pretrain"
    row_shape = STAGE1_SHAPE
    exact_docs = True
    parse_row = staticmethod(parse_stage1_row)

    def prompt(self, tokenizer, tokens, config, example, n_docs):
        if example.data_type == "paraphrase":
            return inputs.paraphrase_prompt(tokenizer, tokens, example.answers[0], n_docs, rng=_rng_for(example.docs[0]))
        return inputs.qa_prompt(tokenizer, tokens, example.questions, example.answers, n_docs)


class Stage2(_CompressAndAnswer):
    """Compression instruction tuning: question + its k compressed documents -> answer."""

    name = "stage2"
    previous = "stage1"
    row = "qa"
    row_shape = QA_SHAPE
    parse_row = staticmethod(parse_qa_row)

    def prompt(self, tokenizer, tokens, config, example, n_docs):
        return inputs.answer_prompt(tokenizer, tokens, example.question, n_docs, example.answers[0])


class Stage3(Stage):
    """End-to-end: the query reasoner scores N candidates, a straight-through top-k picks k of
    them for the decoder, and the decoder's LM loss trains retrieval and generation together.
    Documents are compressed without gradients (the encoder is fixed), as upstream does."""

    name = "stage3"
    trainable = (QUERY_REASONER, "decoder")
    default_lr = 5e-6
    previous = "stage2"
    retrieves = True
    row = "qa"
    row_shape = QA_SHAPE
    parse_row = staticmethod(parse_qa_row)

    def prepare(self, model) -> None:
        model.add_query_reasoner(init_from="encoder")
        super().prepare(model)

    def docs_in_prompt(self, config, n_docs):  # the decoder sees the k retrieved
        return min(config.generation_top_k, n_docs)

    def prompt(self, tokenizer, tokens, config, example, n_docs):
        return inputs.answer_prompt(tokenizer, tokens, example.question, self.docs_in_prompt(config, n_docs),
                                    example.answers[0])

    def collate(self, tokenizer, tokens, config, examples):
        n = _uniform_docs(examples)
        k = min(config.generation_top_k, n)
        pairs = [self.prompt(tokenizer, tokens, config, ex, n) for ex in examples]
        width = max(1, max(len(ex.pos_index) for ex in examples))
        pos = torch.full((len(examples), width), -1, dtype=torch.long)
        for i, ex in enumerate(examples):
            pos[i, : len(ex.pos_index)] = torch.tensor(ex.pos_index, dtype=torch.long)
        return {
            "query": inputs.encode_texts(tokenizer, tokens, config, [ex.question for ex in examples]),
            **_docs_and_prompts(tokenizer, tokens, config, examples, pairs),
            "pos_index": pos,  # (B, P), -1 = none
            "n_docs": n,
            "k": k,
        }

    def loss(self, model, batch, totals=None):
        own = StepTotals.of([batch])
        totals = totals or own
        query = model.embed_queries(batch["query"])  # (B, M*H), trains the query reasoner
        with torch.no_grad():
            memory, _ = model.compress(batch["enc"])  # (B*N, M, H)
        scores = model.scores(query, memory, batch["n_docs"])  # (B, N)
        selected, idx = model.select(scores, memory, batch["k"])
        embeds = model.decoder_embeds(batch["dec"]["input_ids"], selected)
        lm = model.decoder_loss(embeds, batch["dec"]["attention_mask"], batch["dec"]["labels"])
        lm = _part(lm, own.answer_tokens, totals.answer_tokens)
        metrics = {"lm_loss": lm.item()}
        total = lm
        pos = batch["pos_index"].to(scores.device)
        positive = torch.zeros_like(scores, dtype=torch.bool)
        valid = pos >= 0
        positive[torch.arange(pos.size(0), device=pos.device).unsqueeze(1).expand_as(pos)[valid], pos[valid]] = True
        has_pos = positive.any(-1)
        if totals.queries_with_positive:  # keys follow the step's totals, so every micro-batch has them
            n = totals.queries_with_positive
            metrics["recall_at_1"] = positive.gather(1, idx[:, :1]).float().squeeze(1)[has_pos].sum().item() / n
            if model.config.contrastive_weight > 0:
                logits = scores / model.config.retrieval_temperature
                nce = torch.logsumexp(logits, -1) - torch.logsumexp(
                    logits.masked_fill(~positive, float("-inf")), -1)
                nce = nce[has_pos].sum() / n  # rows without a gold doc add nothing
                total = total + model.config.contrastive_weight * nce
                metrics["retrieval_loss"] = nce.item()
        return total, metrics


STAGES: dict[str, Stage] = {s.name: s for s in (Stage1(), Stage2(), Stage3())}  # in training order
ORDER = tuple(STAGES)
ALL = "all"  # every stage not yet final, in order (the CLI's --stage all)


def get_stage(name: str | Stage) -> Stage:
    """The stage object for ``name`` (a stage passes through); upstream names (``stage1_2``,
    ``stage2``) are not accepted here because ``stage2`` means different things in the two projects."""
    if isinstance(name, Stage):
        return name
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"Unknown stage {name!r}: choose one of {', '.join(ORDER)}") from None


def previous_stage(stage: str | Stage) -> Stage | None:
    """The stage whose final model ``stage`` starts from (None for the first)."""
    prev = get_stage(stage).previous
    return STAGES[prev] if prev else None
