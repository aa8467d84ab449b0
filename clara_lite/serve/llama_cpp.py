"""Answering from memory vectors with llama.cpp's kernels: the merged decoder written once as a GGUF
file, the prompt (memory vectors included) fed to llama.cpp as input embeddings, as multimodal
models feed image embeddings.

Why: on a CPU a decoding step reads every weight once, so its time is the bytes of the weights over
memory bandwidth plus fixed per-step costs. In PyTorch fp32 that is 540 MB and ~30 module calls a
step for SmolLM2-135M; llama.cpp reads 8-bit blocks (145 MB) through one C++ graph. Nothing of the
method changes: the prompt is built as :class:`~clara_lite.serve.decoding.ServingDecoder` builds it,
the memory vectors are the index's, decoding is greedy with the same stop tokens, and the answer is
detokenized by the model's own tokenizer (llama.cpp never tokenizes; its vocabulary is written only so
it sizes its output). Measured: benchmarks/README.md, ``rag_latency.py``.

Which models: llama-architecture bases (SmolLM2, TinyLlama, Llama 2/3 without rope scaling) with a
byte-level BPE tokenizer; anything else is served by the PyTorch decoder, and :func:`eligible` says why.
``weights``: ``q8_0`` (default: 8-bit blocks of 32 with one fp16 scale, answers as fp32's within the
benchmarks' intervals) or ``f32`` (bit-for-bit the merged weights; tests compare greedy answers with it).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..core.layout import cache_dir
from .decoding import Generation, ServingDecoder

log = logging.getLogger(__name__)

WEIGHTS = ("q8_0", "f32")
FORMAT_VERSION = 1  # bump when the written file changes for the same weights


def available() -> bool:
    """True when ``llama_cpp`` (llama-cpp-python) and ``gguf`` are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "gguf"))


def eligible(model) -> tuple[bool, str]:
    """Whether ``model``'s decoder can be served by llama.cpp, and why not (one line for the output)."""
    if not available():
        return False, "llama-cpp-python and gguf are not installed (README: 'Faster CPU answers')"
    cfg = model.causal_lm.config
    if cfg.model_type != "llama":
        return False, f"llama.cpp serving is written for llama-architecture models, this is {cfg.model_type!r}"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        return False, f"rope scaling {rope.get('rope_type')!r} is not written to GGUF here"
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return False, "biases in attention/MLP layers are not written to GGUF here"
    backend = getattr(model.tokenizer, "backend_tokenizer", None)  # slow (Python) tokenizers have none
    if backend is None or json.loads(backend.to_str())["model"]["type"] != "BPE":
        return False, "the tokenizer is not byte-level BPE"
    if next(model.causal_lm.parameters()).device.type != "cpu":
        return False, "the model is on a GPU: PyTorch serves it there"
    return True, "llama.cpp"


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection in llama.cpp's rotary layout (its converter does the same; transformers
    undoes it when it reads a GGUF file)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer_fields(writer, tokenizer, n_vocab: int) -> None:
    import gguf

    tokens = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), n_vocab))))
    tokens += [f"<unused{i}>" for i in range(n_vocab - len(tokens))]  # embedding rows beyond the vocabulary
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    types = [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(n_vocab)]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    if tokenizer.eos_token_id is not None:
        writer.add_eos_token_id(tokenizer.eos_token_id)


def _arrays(lm) -> dict[str, np.ndarray]:
    return {k: v.detach().float().contiguous().numpy() for k, v in lm.state_dict().items()}


def write_gguf(lm, tokenizer, path: Path, weights: str = "q8_0", state: dict[str, np.ndarray] | None = None) -> Path:
    """Write the merged decoder ``lm`` (a transformers LlamaForCausalLM) as a GGUF file at ``path``
    (atomically: a half-written file is never left under its name); ``state``: its weights as fp32 arrays,
    when the caller has them already."""
    import gguf

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    cfg = lm.config
    n_layers, n_head, n_kv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    state = _arrays(lm) if state is None else state
    n_vocab = state["model.embed_tokens.weight"].shape[0]
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two servers starting at once write their own
    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    rope = getattr(cfg, "rope_parameters", None) or {}
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_rope_dimension_count(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(n_vocab)
    qtype = gguf.GGMLQuantizationType.Q8_0 if weights == "q8_0" else gguf.GGMLQuantizationType.F32
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if weights == "q8_0" else gguf.LlamaFileType.ALL_F32)
    _tokenizer_fields(w, tokenizer, n_vocab)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    tied = getattr(cfg, "tie_word_embeddings", False)
    for key, array in state.items():
        if key == "lm_head.weight" and tied:
            continue  # llama.cpp reads the output layer from token_embd when output.weight is absent
        name = names.get_name(key, try_suffixes=(".weight",))
        if name is None:
            raise ValueError(f"no GGUF name for the decoder's tensor {key!r}")
        if key.endswith("q_proj.weight"):
            array = _permute(array, n_head)
        elif key.endswith("k_proj.weight"):
            array = _permute(array, n_kv)
        if array.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32 and array.shape[1] % 32 == 0:
            w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


def _fingerprint(state: dict[str, np.ndarray], weights: str) -> str:
    """A digest of the merged weights (what the file is made of), to find an earlier export."""
    h = hashlib.sha256(f"{FORMAT_VERSION}:{weights}".encode())
    for k, v in state.items():
        h.update(k.encode())
        h.update(v.tobytes())
    return h.hexdigest()[:16]


class LlamaCppDecoder(ServingDecoder):
    """:class:`ServingDecoder`'s answers through llama.cpp. The merged copy is exported once (cached by
    the merged weights' digest under ``$CLARA_LITE_CACHE/gguf/``), then dropped: llama.cpp holds the
    weights. Questions of one call are decoded together as llama.cpp sequences (``max_batch`` of them)."""

    def __init__(self, model, *, weights: str = "q8_0", threads: int | None = None, max_batch: int = 8,
                 folder: Path | None = None):
        super().__init__(model, merge=True, prefix_cache=True)  # prefix_ids: the prompt's fixed start
        import llama_cpp

        self.weights, self.max_batch = weights, max_batch
        folder = Path(folder) if folder else cache_dir() / "gguf"
        folder.mkdir(parents=True, exist_ok=True)
        state = _arrays(self.lm)  # once: the digest and, on the first export, the file
        path = folder / f"decoder-{_fingerprint(state, weights)}-{weights}.gguf"
        start = time.perf_counter()
        if not path.is_file():
            write_gguf(self.lm, model.tokenizer, path, weights, state)
        del state
        self.path, self.export_seconds = path, time.perf_counter() - start
        self.n_vocab = self.lm.get_input_embeddings().weight.shape[0]
        self.lm = None  # llama.cpp holds the weights from here on (the prompt's embeddings are the model's own)
        self.how = f"llama.cpp, {weights} weights ({path.name})"
        _quiet(llama_cpp)
        params = llama_cpp.llama_model_default_params()
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.n_embd = llama_cpp.llama_model_n_embd(self._model)
        self.threads = threads or torch.get_num_threads()
        self._ctx, self._ctx_tokens = None, 0
        self._lib = llama_cpp
        self._lock = threading.Lock()  # one llama.cpp context: callers from several threads take turns

    def __del__(self):
        lib = getattr(self, "_lib", None)
        try:
            if lib is not None and getattr(self, "_ctx", None):
                lib.llama_free(self._ctx)
            if lib is not None and getattr(self, "_model", None):
                lib.llama_model_free(self._model)
        except TypeError:  # at interpreter exit the ctypes functions may already be gone: the OS frees the memory
            pass

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _context(self, n_tokens: int, b: int, shared: bool):
        """A llama.cpp context with room for ``n_tokens`` more positions over ``max_batch`` sequences (made
        again, larger, when a call needs more), its sequences 0..b-1 emptied; ``shared``: each of them
        starts as a copy of the prompt's fixed start, prefilled once into sequence ``max_batch`` when the
        context is made (with one KV cache for all sequences a copy shares the cells: nothing is recomputed)."""
        lib, prefix = self._lib, len(self.prefix_ids)
        if self._ctx is None or n_tokens + prefix > self._ctx_tokens:
            if self._ctx:
                lib.llama_free(self._ctx)
            p = lib.llama_context_default_params()
            p.n_ctx = self._ctx_tokens = max(n_tokens + prefix, 1024)
            p.n_batch = p.n_ubatch = p.n_ctx
            p.n_seq_max = self.max_batch + 1
            p.n_threads = p.n_threads_batch = self.threads
            p.kv_unified = True
            self._ctx = lib.llama_init_from_model(self._model, p)
            if not self._ctx:
                raise RuntimeError("llama.cpp could not make a context")
            if prefix:
                rows = [(self.max_batch, pos, t) for pos, t in enumerate(self.prefix_ids)]
                self._run(self._ctx, self._batch(rows, None), [])
        memory = lib.llama_get_memory(self._ctx)
        for seq in range(b):
            lib.llama_memory_seq_rm(memory, seq, -1, -1)
            if shared:
                lib.llama_memory_seq_cp(memory, self.max_batch, seq, -1, -1)
        return self._ctx

    def _batch(self, rows: list[tuple[int, int, object]], embd: np.ndarray | None):
        """One llama.cpp batch (freed by :meth:`_run`): ``rows`` of (sequence, position, token or None), no
        logits asked yet; ``embd`` (n, H) when the rows are embeddings."""
        lib, n = self._lib, len(rows)
        batch = lib.llama_batch_init(n, self.n_embd if embd is not None else 0, 1)
        try:
            batch.n_tokens = n
            if embd is not None:
                np.ctypeslib.as_array(batch.embd, shape=(n * self.n_embd,))[:] = embd.reshape(-1)
            for i, (seq, pos, token) in enumerate(rows):
                if token is not None:
                    batch.token[i] = token
                batch.pos[i], batch.n_seq_id[i], batch.logits[i] = pos, 1, False
                batch.seq_id[i][0] = seq
            return batch
        except BaseException:
            lib.llama_batch_free(batch)
            raise

    def _run(self, ctx, batch, wants: list[int]) -> list[int]:
        lib = self._lib
        try:
            for i in wants:
                batch.logits[i] = True
            if lib.llama_decode(ctx, batch) != 0:
                raise RuntimeError("llama.cpp could not decode the batch")
            out = []
            for i in wants:
                logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, i), shape=(self.n_vocab,))
                out.append(int(np.argmax(logits)))
            return out
        finally:
            lib.llama_batch_free(batch)

    @torch.no_grad()
    def generate(self, questions: list[str], memory: torch.Tensor, k: int, max_new_tokens: int = 64, *,
                 stop_at_eos: bool = True, on_token: Callable[[int, int], None] | None = None) -> Generation:
        b = len(questions)
        if memory.shape[0] != b * k:
            raise ValueError(f"{memory.shape[0]} memory blocks do not split into {b} questions x {k}")
        if b > self.max_batch:  # more questions than sequences: in slices, the same answers
            parts = [self.generate(questions[i:i + self.max_batch], memory[i * k:(i + self.max_batch) * k], k,
                                   max_new_tokens, stop_at_eos=stop_at_eos,
                                   on_token=None if on_token is None else
                                   (lambda j, t, o=i: on_token(o + j, t)))
                     for i in range(0, b, self.max_batch)]
            return Generation([t for p in parts for t in p.texts], [n for p in parts for n in p.prompt_tokens],
                              parts[0].first_token_at, [t for p in parts for t in p.token_ids])
        with self._lock:
            return self._generate(questions, memory, k, max_new_tokens, stop_at_eos, on_token)

    def _generate(self, questions, memory, k, max_new_tokens, stop_at_eos, on_token) -> Generation:
        m, b = self.model, len(questions)
        prompts = [self._prompt_ids(q, k) for q in questions]
        p = len(self.prefix_ids)
        if p and any(ids[:p] != self.prefix_ids for ids in prompts):
            p = 0  # a template that moved: no shared start this time
        embeds = []
        for i, ids in enumerate(prompts):
            ids_t = torch.tensor([ids])
            e = m.decoder_embeds(ids_t, memory[i * k:(i + 1) * k]) if k else m.lm.get_input_embeddings()(ids_t)
            embeds.append(e[0, p:].float().numpy())
        ctx = self._context(sum(len(x) - p + max_new_tokens for x in prompts), b, shared=p > 0)
        rows = [(i, pos, None) for i, ids in enumerate(prompts) for pos in range(p, len(ids))]
        last = list(np.cumsum([len(x) - p for x in prompts]) - 1)
        nxt = self._run(ctx, self._batch(rows, np.concatenate(embeds)), last)
        first_token_at = time.perf_counter()
        out_tokens: list[list[int]] = [[] for _ in range(b)]
        done = [False] * b
        positions = [len(x) for x in prompts]  # where each row's next token goes
        for step in range(max_new_tokens):
            self._take([i for i in range(b) if not done[i]], nxt, out_tokens, done, stop_at_eos, on_token)
            if all(done) or step == max_new_tokens - 1:
                break
            feed = [(i, positions[i], out_tokens[i][-1]) for i in range(b) if not done[i]]
            for i, _, _ in feed:
                positions[i] += 1
            nxt = self._run(ctx, self._batch(feed, None), list(range(len(feed))))
        texts = [t.strip() for t in m.tokenizer.batch_decode(out_tokens, skip_special_tokens=True)]
        return Generation(texts, [len(x) for x in prompts], first_token_at, out_tokens)


def _quiet(llama_cpp) -> None:
    """llama.cpp logs every load to stderr; keep errors only (once per process)."""
    global _QUIET
    if _QUIET is None:
        @llama_cpp.llama_log_callback
        def _log(level, text, _data):
            if level == 4 and text:  # GGML_LOG_LEVEL_ERROR
                log.error("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())

        _QUIET = _log
        llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p(0))


_QUIET = None
