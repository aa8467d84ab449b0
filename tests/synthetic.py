"""A synthetic world of facts and a small random base model that learns it on CPU in about a minute.

Every fact is one short document, "Bob lives in Paris and works as cook.", built from small
vocabularies of words that are single tokens for the SmolLM2 tokenizer (with and without a leading
space), so every answer is one token. The facts are split once: held-out facts are never stated by
a training document, so the tests score documents the model has not seen.

Why not ``helpers.tiny_model``: its base (hidden 64, init std 0.02, 49k random embedding rows) does
not learn this with LoRA alone (the answer-token loss stays at the marginal over the 16 values).
Four choices of the base make it learnable in a few hundred steps:

- init std 1/sqrt(hidden) instead of 0.02: with 0.02 every linear layer shrinks its input ~6x at
  hidden 64, so attention and MLP outputs barely move the residual stream and the decoder never
  learns to read a specific position, not even the name in its own question;
- embedding rows of tokens our texts never use are zero: 49k random directions in 64 dimensions
  crowd out the answer words (the LM head is tied); a real model's embeddings are not random;
- final norm weight 4: tied embeddings of std 1/sqrt(hidden) bound a logit by ~8 otherwise;
- no padding row: with pad_token_id 2 (as in tiny-random) the <|im_end|> row is initialised to
  zero, so its logit is always 0 and an answer can never end.

>>> train_facts, test_facts = split_facts(seed=0)
>>> test_facts[0].doc
'Bob lives in India and works as actor.'
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import torch

from clara_lite import ClaraConfig, ClaraModel, load_base_model
from clara_lite.model.data import QAExample
from clara_lite.model.stages import get_stage

NAMES = tuple("Bob Ann Tom Max Sam Tim Kim Dan Ben Ray Pat Jim Jack Paul Mark Anna Lily Rose Adam John Mary "
              "Alex Carl Fred Greg Jane Nick Ken Lou Hal".split())  # 30
PLACES = tuple("Paris London Rome Boston Chicago Texas Florida Japan China India Italy France Spain Canada "
               "Mexico Egypt".split())  # 16
JOBS = tuple("cook actor guard doctor teacher writer driver artist editor manager scientist student worker "
             "author player agent".split())  # 16


@dataclass(frozen=True)
class Fact:
    name: str
    place: str
    job: str

    @property
    def doc(self) -> str:
        return f"{self.name} lives in {self.place} and works as {self.job}."

    @property
    def qa(self) -> tuple[tuple[str, str], ...]:
        """(question, one-token answer) pairs about the person named in the question."""
        return (f"Where does {self.name} live?", self.place), (f"What is the job of {self.name}?", self.job)

    @property
    def who(self) -> tuple[str, str]:
        """The question whose answer is the name (an encoder trained on it keeps names in memory)."""
        return f"Who lives in {self.place} and works as {self.job}?", self.name


def split_facts(seed: int, held_out: float = 0.125) -> tuple[list[Fact], list[Fact]]:
    """All 7,680 (name, place, job) facts, shuffled, split into (training facts, held-out facts)."""
    facts = [Fact(*t) for t in itertools.product(NAMES, PLACES, JOBS)]
    random.Random(seed).shuffle(facts)
    n_test = int(len(facts) * held_out)
    return facts[n_test:], facts[:n_test]


def qa_rows(facts, rng: random.Random, ask_name: bool = False) -> list[QAExample]:
    """Stage2 rows, shuffled: one question, its one document, its answer (``ask_name``: the
    ``who`` question instead of the two ``qa`` questions)."""
    pairs = [(f, f.who) for f in facts] if ask_name else [(f, qa) for f in facts for qa in f.qa]
    rows = [QAExample(q, (f.doc,), (a,)) for f, (q, a) in pairs]
    rng.shuffle(rows)
    return rows


def retrieval_rows(facts, n: int, rng: random.Random, n_candidates: int = 8) -> list[QAExample]:
    """Stage3 rows: a question about one person among ``n_candidates`` documents about distinct
    people (1 gold + distractors, shuffled; ``pos_index`` records the gold one)."""
    by_name: dict[str, list[Fact]] = {}
    for f in facts:
        by_name.setdefault(f.name, []).append(f)
    names = sorted(by_name)
    rows = []
    for _ in range(n):
        people = [rng.choice(by_name[name]) for name in rng.sample(names, n_candidates)]
        question, answer = rng.choice(people[0].qa)
        order = list(range(n_candidates))
        rng.shuffle(order)
        rows.append(QAExample(question, tuple(people[i].doc for i in order), (answer,), (order.index(0),)))
    return rows


def learnable_model(seed: int = 0, hidden: int = 64, layers: int = 2, adapters=("encoder", "decoder"),
                    **config) -> ClaraModel:
    """A seeded random Llama (see the module docstring) wrapped by ClaraModel with LoRA rank = hidden.

    Defaults: doc_max_length 16 and compr_rate 4 (4 memory vectors per document), top-k 1, no LoRA
    dropout, mse_weight 0. The MSE is taken on final-norm states, 16x larger here (norm weight 4):
    at 0.1 it wins the race, every encoder state collapses onto one vector before the LM loss has
    made the memory informative, and held-out exact match stays at chance (0.01 learns, slower).
    """
    from transformers import LlamaForCausalLM

    from clara_lite.model.base import tiny_random_config

    _, tokenizer = load_base_model("tiny-random")
    torch.manual_seed(seed)
    base = LlamaForCausalLM(tiny_random_config(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        initializer_range=hidden ** -0.5, pad_token_id=None,
    ))
    with torch.no_grad():
        base.model.norm.weight.fill_(4.0)
    kw = dict(doc_max_length=16, compr_rate=4, generation_top_k=1, lora_r=hidden, lora_dropout=0.0,
              mse_weight=0.0)
    kw.update(config)
    config = ClaraConfig(base_model="synthetic-llama", **kw)
    model = ClaraModel.wrap(base, tokenizer, config, adapters=adapters)
    with torch.no_grad():
        emb = model.lm.get_input_embeddings().weight  # (V, H), tied with the LM head
        unused = torch.ones(emb.shape[0], dtype=torch.bool)
        unused[synthetic_token_ids(model)] = False
        emb[unused] = 0.0
    return model


def synthetic_token_ids(model) -> list[int]:
    """Every token id the stages' own collators produce for rows of this world (all words, all prompts)."""
    facts = [Fact(name, PLACES[i % len(PLACES)], JOBS[i % len(JOBS)]) for i, name in enumerate(NAMES)]
    rng = random.Random(0)
    batches = [
        get_stage("stage2").collator(model)(qa_rows(facts, rng) + qa_rows(facts, rng, ask_name=True)),
        get_stage("stage3").collator(model)(retrieval_rows(facts, 4, rng)),
    ]
    ids = {model.tokenizer.pad_token_id}
    for batch in batches:
        for key in ("enc", "dec", "query"):
            if key in batch:
                ids.update(batch[key]["input_ids"].flatten().tolist())
    return sorted(ids)


def train(model, stage_name: str, rows, *, steps: int, batch_size: int, lr: float,
          warmup: int = 30) -> list[dict]:
    """A plain AdamW loop over ``rows`` in order (cycled); the LR is a pure function of the step
    (linear warm-up, then linear decay to zero). Returns each step's metrics."""
    stage = get_stage(stage_name)
    stage.prepare(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    collate = stage.collator(model)
    history = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * (1.0 - step / steps)
        batch = collate([rows[(step * batch_size + i) % len(rows)] for i in range(batch_size)])
        loss, metrics = stage.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append(metrics)
    model.eval()
    return history
