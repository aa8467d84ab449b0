"""Which decoder answers from an index, decided once per model: llama.cpp on a CPU when it is installed
and the model is one it runs, else PyTorch's serving copy in the precision the hardware plan picks
(:func:`~clara_lite.core.hardware.decide_serving`). Its own module because it chooses between
:mod:`.decoding` and :mod:`.llama_cpp`, which builds on it."""

from __future__ import annotations

import os

import torch

from ..core.hardware import ServingPlan, decide_serving, probe_device
from . import llama_cpp
from .decoding import ServingDecoder

SERVING_ENV = "CLARA_LITE_SERVING"  # the default backend when none is passed: one of BACKENDS
# torch-fp32: PyTorch in fp32 whatever the device would pick, so answers are the training forward pass's on any
# CPU (the plan's bf16 on an AMX CPU changes greedy tokens of a near-tie); the test suite's default
BACKENDS = ("auto", "torch", "torch-fp32", "llama.cpp")


def serving_plan(model, *, merge: bool | None = None, backend: str | None = None):
    """What :func:`open_decoder` will make for ``model``, without making it: a
    :class:`~clara_lite.core.hardware.ServingPlan` (``backend`` 'llama.cpp' only where the model is one
    llama.cpp can run, :func:`clara_lite.serve.llama_cpp.eligible`; an unmerged decoder is PyTorch's).
    ``backend`` None: ``$CLARA_LITE_SERVING``, else 'auto' (the test suite sets 'torch-fp32', so it decodes
    the same way with or without llama-cpp-python installed and on any CPU; the llama.cpp tests ask for it by
    name)."""
    backend = backend or os.environ.get(SERVING_ENV) or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"serving backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "torch-fp32":  # nothing to probe
        return ServingPlan("torch", torch.float32, "fp32, as asked (torch-fp32)")
    device = probe_device(model.device)
    plan = decide_serving(device, llama_cpp=llama_cpp.available() and backend != "torch" and merge is not False)
    if device.kind == "cpu" and not llama_cpp.available():
        plan = ServingPlan(plan.backend, plan.dtype, plan.why + "; llama-cpp-python would be faster (make fast-cpu)")
    if backend == "llama.cpp" and merge is False:
        raise ValueError("llama.cpp serves a merged decoder: drop --no-merge (merge=False) or use --serving torch")
    if backend == "llama.cpp" or plan.backend == "llama.cpp":
        ok, why = llama_cpp.eligible(model)
        if ok:
            return plan if plan.backend == "llama.cpp" else ServingPlan("llama.cpp", torch.float32, "as asked")
        if backend == "llama.cpp":
            raise ValueError(f"cannot serve with llama.cpp: {why}")
        fallback = decide_serving(device, llama_cpp=False)
        return ServingPlan(fallback.backend, fallback.dtype, f"{fallback.why}; not llama.cpp: {why}")
    return plan


def open_decoder(model, *, merge: bool | None = None, backend: str | None = None, max_batch: int = 8):
    """The decoder :func:`serving_plan` picks for ``model``, its ``how`` saying what it is and why."""
    plan = serving_plan(model, merge=merge, backend=backend)
    if plan.backend == "llama.cpp":
        decoder = llama_cpp.LlamaCppDecoder(model, max_batch=max_batch)
    else:
        decoder = ServingDecoder(model, merge=merge, dtype=None if merge is False else plan.dtype)
    decoder.how += f" ({plan.why})"
    decoder.plan = plan
    return decoder
