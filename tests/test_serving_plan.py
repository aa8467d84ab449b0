"""How answers are decoded: the plan (llama.cpp on a CPU when installed, else bf16 only where the CPU
multiplies bf16 natively, fp16/bf16 on GPUs by capability), and the llama.cpp path giving the greedy
answers of the PyTorch serving copy (f32 weights: the same tokens; 8-bit blocks: the tolerance below)."""

from __future__ import annotations

import pytest
import torch
from test_index import QUESTIONS, corpus, served_model

from clara_lite.core.hardware import DeviceInfo, decide_serving
from clara_lite.serve import llama_cpp
from clara_lite.serve.decoding import ServingDecoder
from clara_lite.serve.index import ClaraIndex
from clara_lite.serve.serving import serving_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

needs_llama = pytest.mark.skipif(not llama_cpp.available(),
                                 reason="llama-cpp-python and gguf not installed (README: 'Faster CPU answers')")

AVX2 = DeviceInfo("cpu", "x86_64", cpu_flags=frozenset({"avx2"}))
AMX = DeviceInfo("cpu", "x86_64", cpu_flags=frozenset({"avx2", "avx512f", "amx_bf16"}))
T4 = DeviceInfo("cuda", "Tesla T4", (7, 5), 15.8, 15.1, count=1)
A100 = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), 40.0, 39.0, count=1)


def test_the_plan_keeps_fp32_where_the_cpu_lacks_bf16_and_follows_the_gpus_capability():
    assert (decide_serving(AVX2).backend, decide_serving(AVX2).dtype) == ("torch", torch.float32)
    assert "no AMX/AVX512-BF16" in decide_serving(AVX2).why
    assert decide_serving(AMX).dtype == torch.bfloat16
    assert decide_serving(DeviceInfo("cpu", "x86_64", cpu_flags=frozenset({"avx512_bf16"}))).dtype == torch.bfloat16
    assert decide_serving(T4).dtype == torch.float16 and decide_serving(A100).dtype == torch.bfloat16
    # llama.cpp, when installed, serves on a CPU only: a GPU keeps PyTorch in its precision
    assert decide_serving(AVX2, llama_cpp=True).backend == "llama.cpp"
    assert decide_serving(AMX, llama_cpp=True).backend == "llama.cpp"
    assert (decide_serving(T4, llama_cpp=True).backend, decide_serving(T4, llama_cpp=True).dtype) == \
        ("torch", torch.float16)


def test_a_bf16_serving_copy_holds_bf16_weights_and_answers_in_the_same_shape():
    model = served_model()
    memory = model.compress_documents(corpus(4))[0]
    ref = ServingDecoder(model).generate(QUESTIONS[:2], memory, 2, 6, stop_at_eos=False)
    fast = ServingDecoder(model, dtype=torch.bfloat16)
    assert fast.lm.dtype == torch.bfloat16 and "bfloat16" in fast.how
    assert next(model.lm.parameters()).dtype == torch.float32  # the model itself is untouched
    got = fast.generate(QUESTIONS[:2], memory, 2, 6, stop_at_eos=False)
    assert [len(t) for t in got.token_ids] == [len(t) for t in ref.token_ids] == [6, 6]
    assert got.prompt_tokens == ref.prompt_tokens


def test_an_unmerged_or_torch_decoder_is_never_llama_cpp():
    model = served_model()
    assert serving_plan(model, backend="torch").backend == "torch"
    assert serving_plan(model, merge=False).backend == "torch"
    # fp32 whatever the CPU offers (this suite's default): the answers of the training forward pass
    fp32 = serving_plan(model, backend="torch-fp32")
    assert (fp32.backend, fp32.dtype) == ("torch", torch.float32)
    with pytest.raises(ValueError, match="auto, torch, torch-fp32, llama.cpp"):
        serving_plan(model, backend="onnx")
    with pytest.raises(ValueError, match="merged decoder"):
        serving_plan(model, merge=False, backend="llama.cpp")


@pytest.fixture(scope="module")
def talking():
    """A served model whose base has an untied, seeded output layer: greedy answers that are not one
    repeated token, so a wrong weight layout would show as other tokens."""
    model = served_model()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        head = model.causal_lm.get_output_embeddings()
        head.weight = torch.nn.Parameter(torch.randn(head.weight.shape, generator=g) * 0.5)
        model.causal_lm.config.tie_word_embeddings = False
    return model


@needs_llama
def test_llama_cpp_with_f32_weights_gives_the_torch_copys_greedy_answers(talking, tmp_path):
    memory = talking.compress_documents(corpus(6))[0]
    ref = ServingDecoder(talking).generate(QUESTIONS, memory, 2, 12, stop_at_eos=False)
    fast = llama_cpp.LlamaCppDecoder(talking, weights="f32", folder=tmp_path, max_batch=2)
    assert len({t for ids in ref.token_ids for t in ids}) > 3  # answers of several tokens, not one repeated
    together = fast.generate(QUESTIONS, memory, 2, 12, stop_at_eos=False)  # 3 questions over 2 sequences
    alone = [fast.generate([q], memory[2 * i:2 * i + 2], 2, 12, stop_at_eos=False) for i, q in enumerate(QUESTIONS)]
    assert together.token_ids == ref.token_ids
    assert [a.token_ids[0] for a in alone] == ref.token_ids
    assert together.texts == ref.texts and together.prompt_tokens == ref.prompt_tokens
    streamed: list[tuple[int, int]] = []
    fast.generate(QUESTIONS[:2], memory[:4], 2, 5, stop_at_eos=False, on_token=lambda i, t: streamed.append((i, t)))
    assert [t for i, t in streamed if i == 1] == ref.token_ids[1][:5]


@needs_llama
def test_llama_cpp_8_bit_answers_match_the_torch_copys_first_tokens_and_the_file_is_made_once(talking, tmp_path):
    memory = talking.compress_documents(corpus(6))[0]
    ref = ServingDecoder(talking).generate(QUESTIONS, memory, 2, 12, stop_at_eos=False)
    fast = llama_cpp.LlamaCppDecoder(talking, folder=tmp_path)
    got = fast.generate(QUESTIONS, memory, 2, 12, stop_at_eos=False)
    # 8-bit blocks move the logits a little; a random model's are near ties, so a later token may flip. The
    # documented tolerance: each answer's first token equal (EM/F1 on trained models: benchmarks/README.md)
    assert [ids[0] for ids in got.token_ids] == [ids[0] for ids in ref.token_ids]
    assert got.prompt_tokens == ref.prompt_tokens and [len(t) for t in got.token_ids] == [12, 12, 12]
    files = sorted(tmp_path.glob("*.gguf"))
    assert len(files) == 1 and files[0].name.endswith("-q8_0.gguf")
    stamp = files[0].stat().st_mtime_ns
    again = llama_cpp.LlamaCppDecoder(talking, folder=tmp_path)
    assert again.path == files[0] and files[0].stat().st_mtime_ns == stamp  # the same weights: the same file


@needs_llama
def test_an_index_serves_through_llama_cpp_by_default_and_says_so(talking, tmp_path, monkeypatch):
    monkeypatch.setenv("CLARA_LITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CLARA_LITE_SERVING", "auto")  # what a user gets (the suite's default is torch-fp32)
    index = ClaraIndex.build(tmp_path / "kb", talking, corpus(8), keys=(), progress=False)
    planned = index.info()["serving"]
    assert planned["backend"] == "llama.cpp" and planned["decoder"] is None  # planned, not built by info()
    fast = index.ask(QUESTIONS[0], 2, max_new_tokens=8, stop_at_eos=False)
    built = index.info()["serving"]
    assert built["backend"] == "llama.cpp" and built["decoder"].startswith("llama.cpp, q8_0 weights")
    monkeypatch.delenv("CLARA_LITE_SERVING")
    assert ClaraIndex.load(tmp_path / "kb", talking).info()["serving"]["backend"] == "llama.cpp"
    torch_view = ClaraIndex.load(tmp_path / "kb", talking, backend="torch")
    ref = torch_view.ask(QUESTIONS[0], 2, max_new_tokens=8, stop_at_eos=False)
    assert [h.row for h in fast.hits] == [h.row for h in ref.hits]
    assert fast.text.split()[:2] == ref.text.split()[:2]
    assert list((tmp_path / "cache" / "gguf").glob("*.gguf"))
