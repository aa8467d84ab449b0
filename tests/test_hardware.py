"""Hardware planning: simulated devices through the pure ``plan``, plus the real probe on this machine."""

import json

import pytest
import torch

from clara_lite.core.hardware import (
    CPU_WARNING,
    DeviceInfo,
    cpu_threads_note,
    decide_profile,
    decide_serving_batch,
    describe,
    detect_hardware,
    estimate_train_mem_gb,
    library_versions,
)

# Simulated devices: the only place in the project where hardware is faked.
T4 = DeviceInfo("cuda", "Tesla T4", (7, 5), total_mem_gb=15.83, free_mem_gb=15.1, count=1)
A100_80 = DeviceInfo("cuda", "NVIDIA A100-SXM4-80GB", (8, 0), total_mem_gb=85.0, free_mem_gb=84.0, count=1)
A100_40 = DeviceInfo("cuda", "NVIDIA A100-SXM4-40GB", (8, 0), total_mem_gb=42.5, free_mem_gb=42.0, count=1)
CPU = DeviceInfo("cpu", "x86_64")
MPS = DeviceInfo("mps", "Apple MPS")
GTX_1070 = DeviceInfo("cuda", "NVIDIA GeForce GTX 1070", (6, 1), total_mem_gb=8.5, free_mem_gb=8.1, count=1)


def test_t4_uses_fp16_and_sdpa_even_with_flash_attn():
    p = decide_profile(T4, 0.5, flash_attn_available=True)
    assert p.dtype == torch.float16
    assert p.mixed_precision == "fp16"
    assert p.attn_implementation == "sdpa"
    assert "sm 7.5" in p.reason("attn_implementation")
    assert "below sm 8.0" in p.reason("attn_implementation")


def test_a100_with_flash_attn_uses_bf16_and_flash_attention_2():
    p = decide_profile(A100_80, 7.0, flash_attn_available=True)
    assert p.dtype == torch.bfloat16
    assert p.mixed_precision == "bf16"
    assert p.attn_implementation == "flash_attention_2"


def test_a100_without_flash_attn_uses_sdpa():
    p = decide_profile(A100_40, 7.0, flash_attn_available=False)
    assert p.dtype == torch.bfloat16
    assert p.attn_implementation == "sdpa"
    assert "not installed" in p.reason("attn_implementation")


def test_eager_when_torch_has_no_sdpa():
    p = decide_profile(CPU, 0.1, flash_attn_available=False, sdpa_available=False)
    assert p.attn_implementation == "eager"


def test_7b_on_t4_goes_4bit_with_checkpointing():
    p = decide_profile(T4, 7.24, flash_attn_available=False)
    assert p.load_in_4bit is True
    assert p.gradient_checkpointing is True
    assert p.reason("load_in_4bit").startswith("yes (nf4)")
    # 4-bit estimate replaces the fp16 one and fits the 85% budget.
    assert p.est_train_mem_gb == pytest.approx(estimate_train_mem_gb(7.24, 0.6), abs=0.01)
    assert p.est_train_mem_gb < 0.85 * T4.free_mem_gb
    assert p.micro_batch_size * p.grad_accum_steps == 16


def test_half_b_on_t4_stays_16bit():
    p = decide_profile(T4, 0.5, flash_attn_available=False)
    assert p.load_in_4bit is False
    assert p.gradient_checkpointing is False
    assert p.est_train_mem_gb == pytest.approx(0.5 * 2 * 1.3 + 1.5)
    assert (p.micro_batch_size, p.grad_accum_steps) == (8, 2)


def test_7b_on_a100_80gb_stays_16bit():
    p = decide_profile(A100_80, 7.0, flash_attn_available=True)
    assert p.load_in_4bit is False
    assert p.gradient_checkpointing is False
    assert p.est_train_mem_gb == pytest.approx(19.7)


def test_3b_on_t4_fits_16bit_but_checkpoints():
    # 3B in fp16 ~ 9.3 GB fits 85% of 15.1 GB, but a >1B model on a <24 GB GPU is tight.
    p = decide_profile(T4, 3.0, flash_attn_available=False)
    assert p.load_in_4bit is False
    assert p.gradient_checkpointing is True


def test_cpu_plan():
    p = decide_profile(CPU, 7.0, flash_attn_available=True)
    assert p.dtype == torch.float32
    assert p.mixed_precision == "no"
    assert p.attn_implementation == "sdpa"
    assert p.load_in_4bit is False
    assert "CPU" in p.reason("load_in_4bit")
    assert (p.micro_batch_size, p.grad_accum_steps) == (1, 16)


def test_mps_plan_is_fp32_sdpa_no_4bit():
    p = decide_profile(MPS, 7.0, flash_attn_available=False)
    assert p.dtype == torch.float32
    assert p.mixed_precision == "no"
    assert p.attn_implementation == "sdpa"
    assert p.load_in_4bit is False


def test_unknown_model_size_never_quantizes():
    p = decide_profile(T4, None, flash_attn_available=False)
    assert p.load_in_4bit is False
    assert p.est_train_mem_gb is None
    assert "unknown" in p.reason("load_in_4bit")


def test_device_info_validation():
    with pytest.raises(ValueError, match="kind"):
        DeviceInfo("tpu", "v5e")
    with pytest.raises(ValueError, match="capability"):
        DeviceInfo("cuda", "mystery GPU")
    assert T4.torch_device == "cuda:0"
    assert CPU.torch_device == "cpu"


def test_detect_hardware_on_this_machine_is_cpu():
    if torch.cuda.is_available():
        pytest.skip("this test describes a CPU machine")
    p = detect_hardware(0.135)
    assert p.device.kind == "cpu"
    assert p.device.torch_device == "cpu"
    assert p.dtype == torch.float32
    assert p.attn_implementation == "sdpa"
    assert p.flash_attn_available is False
    assert "CPU" in p.reason("attn_implementation")


def test_detect_hardware_rejects_missing_cuda():
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(ValueError, match="CUDA"):
        detect_hardware(device="cuda")


def test_describe_lists_decisions_and_versions():
    text = describe(detect_hardware(0.135, device="cpu"))
    assert "float32" in text
    assert "sdpa" in text
    assert torch.__version__ in text
    assert "transformers" in text and "peft" in text
    simulated = describe(decide_profile(T4, 7.24, flash_attn_available=False), versions=False)
    assert "Tesla T4 (sm 7.5)" in simulated
    assert "Colab free tier" in simulated
    assert "yes (nf4)" in simulated
    assert "versions" not in simulated


def test_library_versions_has_core_stack():
    v = library_versions()
    assert v["torch"] == torch.__version__.split("+")[0] or v["torch"] == torch.__version__
    assert {"python", "transformers", "peft", "accelerate"} <= v.keys()


def test_to_dict_is_json_serializable():
    d = json.loads(json.dumps(decide_profile(A100_80, 7.0, flash_attn_available=True).to_dict()))
    assert d["dtype"] == "bfloat16"
    assert d["device"]["capability"] == [8, 0]
    assert d["attn_implementation"] == "flash_attention_2"
    assert d["reasons"]["dtype"].startswith("bfloat16")
    cpu = json.loads(json.dumps(detect_hardware(device="cpu").to_dict()))
    assert cpu["dtype"] == "float32"
    assert cpu["device"]["capability"] is None


def test_device_notes_match_whole_model_names_only():
    a100 = describe(decide_profile(A100_80, 7.0, flash_attn_available=False), versions=False)
    assert "Ampere sm 8.0" in a100
    l40s = DeviceInfo("cuda", "NVIDIA L40S", (8, 9), total_mem_gb=48.0, free_mem_gb=47.0, count=1)
    assert "Ada sm 8.9, 24 GB" not in describe(decide_profile(l40s, 7.0, flash_attn_available=False), versions=False)


def test_cpu_threads_note_asks_for_passive_waiting_only_when_the_cpus_are_shared():
    busy = cpu_threads_note(2, 2, 1.7, None)
    assert "OMP_WAIT_POLICY=PASSIVE" in busy and "load average 1.7" in busy
    assert "idle enough" in cpu_threads_note(2, 2, 0.1, None)
    assert "idle enough" in cpu_threads_note(1, 4, 2.0, None)  # 3 spare CPUs for the others
    assert "threads sleep" in cpu_threads_note(2, 2, 1.7, "passive")


def test_doctor_prints_the_plan_and_the_cpu_threads_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this test describes a CPU machine")
    from clara_lite.cli import main

    assert main(["doctor", "--base", "tiny-random"]) == 0
    out = capsys.readouterr().out
    assert "batch         1 x 16 = 16 rows per step" in out
    assert "clara_lite    0.1.0 (Colab installs it from <drive>/clara_lite-0.1.0-*.whl or <drive>/wheels/ (git: only " \
           "$CLARA_GIT, until clara-lite/clara_lite is ours) (the package index: not until the name is ours)" in out
    assert "warning" not in out  # a tiny model on a CPU is fine
    assert main(["doctor", "--base", "mistral-7b"]) == 0
    assert f"warning       {CPU_WARNING}" in capsys.readouterr().out  # the whole advice, T4 included
    assert f"cpu threads   {torch.get_num_threads()} torch thread(s)" in out


@pytest.mark.parametrize("device, batch", [(CPU, 8), (MPS, 8), (GTX_1070, 8), (T4, 16), (A100_40, 32), (A100_80, 32)])
def test_the_serving_batch_grows_with_the_gpus_memory_and_says_why(device, batch):
    chosen, why = decide_serving_batch(device)
    assert chosen == batch
    named = [device.name, f"{device.total_mem_gb:g} GB"] if device.kind == "cuda" else [device.kind.upper()]
    assert all(words in why for words in named), why
