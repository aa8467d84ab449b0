"""ClaraModel: one causal LM, three LoRA adapters, documents compressed into memory vectors.

Read top to bottom: construction, adapter switching, the three passes (compress documents,
embed queries, decode from memory vectors), then the upstream-named inference API.

Shapes: B questions, K documents per question, N candidate documents, M = n_mem memory
tokens per document, H hidden size, T sequence length.
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import ClaraConfig
from . import inputs
from .adapters import lora_config, prepare_base, share_dropout
from .base import load_base_model
from .inputs import SpecialTokens
from .saving import load_model, save_model
from .stages import QUERY_REASONER

log = logging.getLogger(__name__)


def differentiable_topk(scores: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through top-k: forward is a hard one-hot selection, backward the softmax's gradient.

    scores (B, N) -> W (B, k, N) with W[b, j] one-hot on the j-th best document, and indices (B, k).
    Slot j's soft distribution excludes the documents already taken by slots < j.
    """
    logits = scores / max(temperature, 1e-6)
    idx = logits.topk(k, dim=-1).indices  # (B, k)
    hard = torch.zeros(*idx.shape, scores.size(-1), device=scores.device, dtype=scores.dtype)
    hard.scatter_(2, idx.unsqueeze(-1), 1.0)
    taken = torch.zeros_like(scores)
    soft = []
    for j in range(k):
        soft.append(F.softmax(logits + (1.0 - taken + 1e-8).log(), dim=-1).float())
        taken = torch.clamp(taken + hard[:, j], max=1.0)
    soft = torch.stack(soft, dim=1)
    return hard + (soft - soft.detach()), idx


class ClaraModel(nn.Module):
    """A base LM wrapped by PEFT with ``encoder``, ``decoder`` and ``query_reasoner`` adapters.

    >>> model = ClaraModel.from_base("tiny-random", doc_max_length=64, compr_rate=16)
    >>> answers = model.generate_from_text(["Who?"], [["Ada wrote it."]], max_new_tokens=4)
    >>> len(answers), type(answers[0])
    (1, <class 'str'>)
    """

    def __init__(self, lm, tokenizer, config: ClaraConfig, tokens: SpecialTokens):
        super().__init__()
        self.lm = lm  # peft.PeftModel around the causal LM
        self.tokenizer = tokenizer
        self.config = config
        self.tokens = tokens
        self.generation_top_k = config.generation_top_k
        share_dropout(lm)  # one dropout mask per distinct LoRA input (see SharedDropout)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_base(cls, name_or_path: str | None = None, *, config: ClaraConfig | None = None,
                  base_path: str | None = None, dtype=None, device_map=None, attn_implementation=None,
                  adapters=("encoder", "decoder"), seed: int | None = None, **config_kwargs) -> ClaraModel:
        """A fresh model: ``config`` as built by the caller (the training path hands over its one object), or
        one made of ``name_or_path`` (a registry name, Hub id or folder) and ``config_kwargs``. ``base_path``
        loads the base from a local copy while ``config.base_model`` keeps its name."""
        if config is None:
            config = ClaraConfig(base_model=name_or_path, **config_kwargs)
        elif name_or_path is not None or config_kwargs:
            raise TypeError("from_base takes a config or a name with config fields, not both")
        base, tokenizer = load_base_model(
            base_path or config.base_model, dtype=dtype, device_map=device_map, quantization=config.quantization,
            attn_implementation=attn_implementation,
        )
        if seed is not None:
            torch.manual_seed(seed)
        return cls.wrap(base, tokenizer, config, adapters=adapters)

    @classmethod
    def wrap(cls, base, tokenizer, config: ClaraConfig, adapters=("encoder", "decoder")) -> ClaraModel:
        """Add CLaRa's tokens to ``tokenizer``/``base`` and put fresh LoRA adapters on it."""
        from peft import get_peft_model

        tokens = inputs.add_special_tokens(tokenizer, config)
        base = prepare_base(base, tokenizer, config)
        lm = get_peft_model(base, lora_config(config), adapter_name=adapters[0])
        for name in adapters[1:]:
            lm.add_adapter(name, lora_config(config))
        model = cls(lm, tokenizer, config, tokens)
        model.freeze_all_adapters()
        return model

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> ClaraModel:
        """Load our format, an upstream CLaRa checkpoint (adapters.pth) or an exported zip."""
        return load_model(path, model_cls=cls, **kwargs)

    def save_pretrained(self, directory) -> None:
        """Adapters, added-token rows, config and tokenizer (not the base model)."""
        save_model(self, directory)

    # ------------------------------------------------------------------ adapters

    @property
    def adapter_names(self) -> list[str]:
        return list(self.lm.peft_config)

    @property
    def has_retriever(self) -> bool:
        """Whether a query reasoner (stage3) picks the top-k documents; without one, all are read."""
        return QUERY_REASONER in self.lm.peft_config

    def add_query_reasoner(self, init_from: str | None = "encoder") -> None:
        """Stage3's retriever, started from the compressor's weights (as upstream does)."""
        if self.has_retriever:
            return
        self.lm.add_adapter(QUERY_REASONER, lora_config(self.config))
        share_dropout(self.lm)
        if init_from in self.adapter_names:
            self.copy_adapter(init_from, QUERY_REASONER)
        self.freeze_all_adapters()

    def copy_adapter(self, src: str, dst: str) -> None:
        with torch.no_grad():
            for module in self._tuner_layers():
                for attr in module.adapter_layer_names:
                    layers = getattr(module, attr)
                    if src in layers and dst in layers:
                        for p_dst, p_src in zip(layers[dst].parameters(), layers[src].parameters(), strict=True):
                            p_dst.copy_(p_src)

    def freeze_all_adapters(self) -> None:
        for p in self.lm.parameters():
            p.requires_grad_(False)

    def set_trainable(self, names) -> None:
        """Exactly the LoRA weights of ``names`` train; everything else is frozen."""
        self.freeze_all_adapters()
        for pname, p in self.lm.named_parameters():
            if "lora_" in pname and any(f".{n}." in pname for n in names):
                p.requires_grad_(True)

    def _tuner_layers(self) -> list:
        from peft.tuners.tuners_utils import BaseTunerLayer

        # adding an adapter adds no new tuner layers, but a fresh wrap does: key the cache on lm
        cached = getattr(self, "_tuner_cache", None)
        if cached is None or cached[0] is not self.lm:
            cached = (self.lm, [m for m in self.lm.modules() if isinstance(m, BaseTunerLayer)])
            self._tuner_cache = cached
        return cached[1]

    @contextlib.contextmanager
    def adapter(self, name: str):
        """Route every LoRA layer through adapter ``name`` (no requires_grad side effects, unlike
        PEFT's set_adapter, so one forward can use several adapters and train them all)."""
        if name not in self.adapter_names:
            raise ValueError(f"adapter {name!r} missing; this model has {self.adapter_names}")
        layers = self._tuner_layers()
        previous = [m._active_adapter for m in layers]
        outer = getattr(self, "_current_adapter", None)
        for m in layers:
            m._active_adapter = [name]
        self._current_adapter = name
        try:
            yield
        finally:
            for m, prev in zip(layers, previous, strict=True):
                m._active_adapter = prev
            self._current_adapter = outer

    def enable_gradient_checkpointing(self) -> None:
        """Per-layer activation checkpointing that recomputes each layer under the adapter it ran
        with: a plain setup would recompute under whatever adapter is active during backward."""
        self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for module in self.lm.modules():
            func = getattr(module, "_gradient_checkpointing_func", None)
            if func is not None and not getattr(func, "_clara_adapter_aware", False):
                module._gradient_checkpointing_func = self._adapter_aware(func)

    def _adapter_aware(self, checkpoint_fn):
        def run(fn, *args, **kwargs):
            name = self._current_adapter  # the adapter this layer runs with now

            def call(*a, **kw):
                with self.adapter(name):
                    return fn(*a, **kw)

            return checkpoint_fn(call, *args, **kwargs)

        run._clara_adapter_aware = True
        return run

    def forward(self, batch: dict, stage, totals=None) -> tuple[torch.Tensor, dict]:
        """Training step entry point (so DDP sees a forward): ``stage.loss`` on ``batch``."""
        return stage.loss(self, batch, totals)

    # ------------------------------------------------------------------ passes

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    @property
    def causal_lm(self):
        return self.lm.get_base_model()

    @property
    def attn_implementation(self) -> str:
        """The attention the loaded base runs (``sdpa``, ``flash_attention_2``, ``eager``): what ran."""
        return str(self.causal_lm.config._attn_implementation)

    def _last_hidden(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None):
        """Last-layer states only: no LM head, no per-layer hidden states (most of the memory)."""
        body = self.causal_lm.base_model  # e.g. LlamaModel inside LlamaForCausalLM
        out = body(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                   position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    def _memory_states(self, adapter: str, enc: dict) -> tuple[torch.Tensor, torch.Tensor]:
        ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device)
        pos = enc.get("position_ids")
        pos = pos.to(self.device) if pos is not None else None
        with self.adapter(adapter):
            hidden = self._last_hidden(ids, mask, pos)  # (B, T, H)
        return hidden, mask

    def compress(self, enc: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder inputs -> (memory vectors (B, M, H): the last hidden states at the memory positions, MSE
        between their mean and the mean document state). Stored, indexed and scored as they are, whatever
        ``memory_space`` the decoder reads them in."""
        hidden, mask = self._memory_states("encoder", enc)
        m = self.config.n_mem
        mem = hidden[:, -m:]  # memory tokens are appended last
        doc_mask = mask.clone()
        doc_mask[:, -m:] = 0
        doc_mask = doc_mask.to(hidden.dtype).unsqueeze(-1)
        doc_mean = (hidden * doc_mask).sum(1) / doc_mask.sum(1)
        mse = F.mse_loss(doc_mean, mem.mean(1))
        return mem, mse

    def compress_for_training(self, enc: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`compress` plus the segment loss when the batch carries segment targets (``segment_loss_weight``):
        the mean negative log-likelihood, through the LM head, of memory vector i's share of its document."""
        mem, mse = self.compress(enc)
        if "segments" not in enc:
            return mem, mse, None
        logits = self.causal_lm.get_output_embeddings()(mem).float()  # (B, M, V)
        targets = enc["segments"].to(self.device)  # (B, M, compr_rate)
        valid = targets != inputs.IGNORE_INDEX
        picked = F.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0))  # (B, M, compr_rate)
        per_doc = (picked * valid).sum((1, 2)) / valid.sum((1, 2)).clamp(min=1)
        return mem, mse, -per_doc.mean()

    def readable(self, memory: torch.Tensor) -> torch.Tensor:
        """Memory vectors (N, M, H) as the decoder reads them: unchanged (``memory_space="hidden"``, upstream),
        or (``"tokens"``) the mixture of input embeddings weighted by the LM head's distribution at each
        vector: a point in the space of the decoder's own inputs, which it reads like text before any training
        (last hidden states are far larger than the embeddings and alike across documents, and a small model
        needs far more data than a demo has to learn to read them). Retrieval keeps scoring the hidden states,
        which tell documents apart far better than the mixtures (figures: benchmarks/README.md, "Measurements
        behind the defaults")."""
        if self.config.memory_space == "hidden":
            return memory
        table = self.lm.get_input_embeddings().weight  # (V, H)
        head = self.causal_lm.get_output_embeddings()
        flat = memory.reshape(-1, memory.size(-1)).to(table.dtype)
        out = [F.softmax(head(flat[i : i + 512]).float(), dim=-1).to(table.dtype) @ table  # 512 x V at a time
               for i in range(0, flat.size(0), 512)]
        return torch.cat(out).reshape(memory.shape)

    def embed_queries(self, enc: dict) -> torch.Tensor:
        """Query-reasoner states at the memory positions, flattened: (B, M*H)."""
        hidden, _ = self._memory_states(QUERY_REASONER, enc)
        return hidden[:, -self.config.n_mem:].reshape(hidden.size(0), -1)

    def decoder_embeds(self, dec_input_ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings with each memory-token position replaced by a compressed vector.

        dec_input_ids (B, T); memory (B*K, M, H), documents of question b at rows b*K..b*K+K-1.
        """
        ids = dec_input_ids.to(self.device)
        embeds = self.lm.get_input_embeddings()(ids)
        slots = torch.isin(ids, torch.tensor(self.tokens.mem_ids, device=ids.device))
        n_slots = int(slots.sum())
        if n_slots != memory.shape[0] * memory.shape[1]:
            raise ValueError(
                f"decoder prompt has {n_slots} memory slots but {memory.shape[0]} documents x "
                f"{memory.shape[1]} vectors were given (is a <MEM> token written in a question?)"
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), self.readable(memory.to(self.device)).to(embeds.dtype))

    def decoder_loss(self, embeds, attention_mask, labels) -> torch.Tensor:
        """Next-token cross-entropy on answer tokens; the LM head runs on those positions only."""
        mask = attention_mask.to(self.device)
        with self.adapter("decoder"):
            hidden = self._last_hidden(attention_mask=mask, position_ids=inputs.mask_positions(mask),
                                       inputs_embeds=embeds)
        targets = labels.to(self.device)[:, 1:]
        keep = targets != inputs.IGNORE_INDEX
        logits = self.causal_lm.get_output_embeddings()(hidden[:, :-1][keep])  # (n_answer_tokens, V)
        return F.cross_entropy(logits.float(), targets[keep])

    def scores(self, query_reps: torch.Tensor, doc_memory: torch.Tensor, n_docs: int) -> torch.Tensor:
        """Cosine similarity of each query with its N candidates: (B, N)."""
        docs = doc_memory.reshape(query_reps.size(0), n_docs, -1)  # (B, N, M*H)
        q = F.normalize(query_reps.float(), dim=-1).unsqueeze(1)
        return (q @ F.normalize(docs.float(), dim=-1).transpose(1, 2)).squeeze(1)

    def select(self, scores: torch.Tensor, doc_memory: torch.Tensor, k: int):
        """Differentiable top-k over candidates -> (selected memory (B*k, M, H), indices (B, k))."""
        b, n = scores.shape
        w, idx = differentiable_topk(scores, k, self.config.retrieval_temperature)
        docs = doc_memory.reshape(b, n, -1)
        selected = torch.einsum("bkn,bnd->bkd", w.to(docs.dtype), docs)
        return selected.reshape(b * k, self.config.n_mem, -1), idx

    # ------------------------------------------------------------------ generation

    def _encode(self, texts: list[str]) -> dict:
        return inputs.encode_texts(self.tokenizer, self.tokens, self.config, texts)

    def _answer_prompts(self, questions: list[str], n_docs: int) -> dict:
        texts = [inputs.answer_prompt(self.tokenizer, self.tokens, q, n_docs)[1] for q in questions]
        return inputs.tokenize_prompts(self.tokenizer, texts, None, self.config.max_decoder_length)

    @torch.no_grad()
    def _generate(self, embeds, attention_mask, max_new_tokens: int) -> list[str]:
        with self.adapter("decoder"):
            out = self.lm.generate(
                inputs_embeds=embeds,
                attention_mask=attention_mask.to(self.device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        self.last_output_ids = out
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    @staticmethod
    def _check_docs(questions, documents) -> int:
        if len(documents) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(documents)} document lists")
        k = len(documents[0])
        if k == 0 or any(len(d) != k for d in documents):
            raise ValueError("every question needs the same, non-zero number of documents")
        return k

    # ------------------------------------------------------------------ large pools (compressed in batches)

    compress_batch_size = 32  # documents per encoder pass at inference; serve.index sets it from the hardware plan

    @torch.no_grad()
    def compress_documents(self, documents: list[str], batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(memory vectors (N, M, H), MSE) for a flat list of documents, ``batch_size`` (default
        ``compress_batch_size``) at a time: a pool of thousands never goes through one forward pass."""
        self.eval()
        documents, size = list(documents), batch_size or self.compress_batch_size
        if len(documents) <= size:
            return self.compress(self._encode(documents))
        memory, mse = [], 0.0
        for start in range(0, len(documents), size):
            batch = documents[start:start + size]
            mem, batch_mse = self.compress(self._encode(batch))
            memory.append(mem)
            mse = mse + batch_mse * len(batch)  # the MSE is a mean over rows: weight each batch by its rows
        return torch.cat(memory), mse / len(documents)

    def _compress_pool(self, documents: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Memory vectors of each distinct document once, and where each question's documents are:
        (memory (U, M, H), positions (B, K) into it); positions None when every document was compressed
        in order (small pools, unchanged). Questions asked over one shared pool compress it once."""
        flat = [d for docs in documents for d in docs]
        if len(flat) <= self.compress_batch_size:
            return self.compress_documents(flat)[0], None
        unique = {d: i for i, d in enumerate(dict.fromkeys(flat))}
        where = torch.tensor([[unique[d] for d in docs] for docs in documents], dtype=torch.long)
        return self.compress_documents(list(unique))[0], where

    def _compress_per_question(self, questions: list[str], documents: list[list[str]]) -> tuple[int, torch.Tensor]:
        """(documents per question, their memory vectors (B*K, M, H), question by question)."""
        k = self._check_docs(questions, documents)
        memory, where = self._compress_pool(documents)
        return k, memory if where is None else memory[where.flatten().to(memory.device)]

    @torch.no_grad()
    def generate_from_text(self, questions: list[str], documents: list[list[str]], max_new_tokens: int = 128):
        """Answer each question from its documents (all of them, compressed)."""
        k, memory = self._compress_per_question(questions, documents)
        return self.generate_from_compressed_documents_and_questions(questions, memory, max_new_tokens, k)

    @torch.no_grad()
    def generate_from_compressed_documents_and_questions(self, questions, compressed_documents,
                                                         max_new_tokens: int = 128, k: int | None = None):
        """Answer from already compressed documents (B*K, M, H), K per question."""
        self.eval()
        k = k or compressed_documents.size(0) // len(questions)
        if compressed_documents.size(0) != k * len(questions):
            raise ValueError(f"{compressed_documents.size(0)} compressed documents do not split into "
                             f"{len(questions)} questions x {k}")
        dec = self._answer_prompts(list(questions), k)
        embeds = self.decoder_embeds(dec["input_ids"], compressed_documents.to(self.device))
        return self._generate(embeds, dec["attention_mask"], max_new_tokens)

    @torch.no_grad()
    def generate_from_paraphrase(self, questions: list[str], documents: list[list[str]], max_new_tokens: int = 128):
        """Restate the documents from their memory vectors (a check of what compression kept)."""
        k, memory = self._compress_per_question(questions, documents)
        texts = [inputs.paraphrase_prompt(self.tokenizer, self.tokens, None, k)[1] for _ in questions]
        dec = inputs.tokenize_prompts(self.tokenizer, texts, None, self.config.max_decoder_length)
        return self._generate(self.decoder_embeds(dec["input_ids"], memory), dec["attention_mask"], max_new_tokens)

    def _retrieve_pool(self, questions: list[str], documents: list[list[str]], k: int | None):
        """(scores (B, N), memory (U, M, H), positions (B, N) or None, k): see :meth:`_compress_pool`."""
        if not self.has_retriever:  # a stage1/stage2 model: nothing to pick documents with
            raise ValueError(
                f"this model has no query reasoner (adapters: {', '.join(self.adapter_names)}; stage3 trains it), so "
                "it cannot pick documents: give it the documents to read (generate_from_text, `clara-lite ask "
                "--docs`), or serve it over an index, which retrieves with BM25 or embeddings (`clara-lite index "
                "build`, then `clara-lite ask --index DIR`), or train stage3")
        n = self._check_docs(questions, documents)
        memory, where = self._compress_pool(documents)  # also switches to eval
        k = min(k or self.generation_top_k, n)
        query = self.embed_queries(self._encode(list(questions)))
        if where is None:
            return self.scores(query, memory, n), memory, None, k
        keys = F.normalize(memory.flatten(1).float(), dim=-1)  # each distinct document once
        sims = F.normalize(query.float(), dim=-1) @ keys.T  # (B, U): the same cosine as ``scores``
        return sims.gather(1, where.to(sims.device)), memory, where, k

    @torch.no_grad()
    def retrieve(self, questions: list[str], documents: list[list[str]], k: int | None = None):
        """Query reasoner scores each question's candidates -> (scores (B, N), memory, k to select)."""
        scores, memory, where, k = self._retrieve_pool(questions, documents, k)
        return scores, memory if where is None else memory[where.flatten().to(memory.device)], k

    @torch.no_grad()
    def generate_from_questions(self, questions: list[str], documents: list[list[str]],
                                max_new_tokens: int = 128, top_k: int | None = None):
        """Retrieve top-k of each question's candidates, then answer: -> (answers, topk_indices (B, k)).

        A large pool is compressed in batches, each distinct document once, and only the k selected
        memory blocks per question are gathered (no (B, N, M, H) tensor)."""
        scores, memory, where, k = self._retrieve_pool(questions, documents, top_k)
        if where is None:
            selected, idx = self.select(scores, memory, k)
        else:  # hard top-k at inference: selecting is gathering
            idx = scores.topk(k, dim=-1).indices
            selected = memory[where.to(idx.device).gather(1, idx).flatten().to(memory.device)]
        dec = self._answer_prompts(list(questions), k)
        embeds = self.decoder_embeds(dec["input_ids"], selected)
        return self._generate(embeds, dec["attention_mask"], max_new_tokens), idx
