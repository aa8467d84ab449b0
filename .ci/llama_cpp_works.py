"""Exit 0 when the installed llama-cpp-python decodes a token of the embedded GGUF on this CPU.

Run as its own process by ``.ci/run``: a wheel whose kernels this CPU cannot run dies here (SIGSEGV, SIGILL),
not in the middle of the test suite."""
import llama_cpp

from clara_lite.model.base import embedded_gguf_path

llm = llama_cpp.Llama(model_path=str(embedded_gguf_path()), n_ctx=64, n_threads=1, verbose=False)
out = llm.create_completion("The capital of France is", max_tokens=2)["choices"][0]["text"]
print(f"llama.cpp decodes on this CPU: {llama_cpp.__version__}, {out!r}")
