"""The offload planner on synthetic models and devices: full, partial, none, shrunk context, several GPUs."""

from __future__ import annotations

import pytest

from runtime.fit import GIB, MIB, ModelLayout, choose_gpus, plan, summary
from runtime.hardware import Device

# A 7B-class model at Q4: 32 layers of ~120 MiB, 8 KV heads of 128 dims, 32k vocabulary.
SEVEN_B = ModelLayout(n_layers=32, layer_bytes=(120 * MIB,) * 32, other_bytes=2 * 140 * MIB, n_heads_kv=8,
                      head_dim_k=128, head_dim_v=128, n_embd=4096, n_vocab=32000, context_length=32768)
KV_PER_LAYER_8K = 8192 * 8 * 256 * 2   # 32 MiB per layer at ctx 8192


def gpu(name: str, free_gib: float, total_gib: float, backend: str = "Vulkan", kind: str = "gpu") -> Device:
    return Device(name=name, description=f"{name} card", backend=backend, kind=kind,
                  free=int(free_gib * GIB), total=int(total_gib * GIB))


CPU = Device("CPU", "x86", "CPU", "cpu", 32 * GIB, 32 * GIB)
PLENTY = 64 * GIB


def test_kv_arithmetic():
    assert SEVEN_B.kv_per_layer(8192) == KV_PER_LAYER_8K == 32 * MIB


def test_full_offload_includes_the_output_head():
    p = plan(SEVEN_B, [gpu("Vulkan0", 12, 12)], PLENTY, 8192)
    assert p.n_gpu_layers == 33 and p.devices == ["Vulkan0"] and p.tensor_split is None
    assert p.gpu_bytes["Vulkan0"] > 32 * (120 + 32) * MIB


def test_partial_offload_fills_free_memory_but_not_the_margin():
    # 4 GiB free: minus 512 MiB margin and ~0.2 GiB compute leaves room for ~22 layers of 152 MiB.
    device = gpu("CUDA0", 4, 8, backend="CUDA")
    p = plan(SEVEN_B, [device], PLENTY, 8192)
    assert 18 <= p.n_gpu_layers < 32
    assert p.gpu_bytes["CUDA0"] <= device.free - 512 * MIB
    one_more = (p.n_gpu_layers + 1) * (120 + 32) * MIB + SEVEN_B.compute_bytes()
    assert one_more > device.free - 512 * MIB


def test_no_offload_when_the_gpu_is_nearly_full():
    p = plan(SEVEN_B, [gpu("Vulkan0", 0.6, 8)], PLENTY, 8192)
    assert p.n_gpu_layers == 0 and p.devices == []
    line = summary(p, SEVEN_B, [gpu("Vulkan0", 0.6, 8)], "haswell", 8)
    assert "0/32 layers (not enough free memory)" in line


def test_cpu_only_shrinks_the_context_to_fit_ram_and_says_so():
    # Weights ~4 GiB; 5 GiB free leaves ~0.5 GiB for KV at 4 MiB/token... 32 layers x 4 KiB x 2 = 128 KiB/token.
    p = plan(SEVEN_B, [], 5 * GIB, 32768)
    assert p.n_gpu_layers == 0 and p.ctx < 32768 and p.ctx % 256 == 0 and p.ctx >= 512
    assert p.ram_bytes <= 5 * GIB
    assert any("context shrunk from 32768" in n for n in p.notes)
    assert plan(SEVEN_B, [], PLENTY, 32768).ctx == 32768


def test_offloading_frees_ram_for_context():
    cpu_only = plan(SEVEN_B, [], 5 * GIB, 32768)
    with_gpu = plan(SEVEN_B, [gpu("Vulkan0", 24, 24)], 5 * GIB, 32768)
    assert with_gpu.n_gpu_layers == 33 and with_gpu.ctx == 32768 > cpu_only.ctx


def test_ram_too_small_even_for_the_minimum_context_is_reported():
    p = plan(SEVEN_B, [], 2 * GIB, 4096)
    assert p.ctx == 512 and any("run slowly" in n for n in p.notes)


def test_several_gpus_split_in_proportion_to_free_memory():
    gpus = [gpu("CUDA0", 3, 8, backend="CUDA"), gpu("CUDA1", 3, 8, backend="CUDA")]
    p = plan(SEVEN_B, gpus, PLENTY, 8192)
    assert p.devices == ["CUDA0", "CUDA1"] and p.tensor_split == [0.5, 0.5]
    single = plan(SEVEN_B, gpus[:1], PLENTY, 8192)
    assert p.n_gpu_layers > single.n_gpu_layers


def test_gpu_layers_override_is_obeyed_and_warned_about():
    p = plan(SEVEN_B, [gpu("Vulkan0", 2, 8)], PLENTY, 8192, gpu_layers=40)
    assert p.n_gpu_layers == 33
    assert any("more than the model's 33" in n for n in p.notes)
    assert any("out-of-memory" in n for n in p.notes)
    assert plan(SEVEN_B, [gpu("Vulkan0", 12, 12)], PLENTY, 8192, gpu_layers=5).n_gpu_layers == 5
    assert plan(SEVEN_B, [], PLENTY, 8192, gpu_layers=5).n_gpu_layers == 0


@pytest.mark.parametrize("backend, expected", [
    ("auto", ["CUDA0"]), ("vulkan", ["Vulkan1"]), ("cuda", ["CUDA0"]), ("metal", [])])
def test_choose_gpus(backend, expected):
    devices = [CPU, gpu("CUDA0", 7.5, 8, backend="CUDA"), gpu("Vulkan0", 0.5, 1, kind="igpu"),
               gpu("Vulkan1", 7.4, 8)]  # the same card through Vulkan, and an iGPU
    assert [d.name for d in choose_gpus(devices, backend)] == expected


def test_integrated_gpu_is_used_when_it_is_the_only_one():
    igpu = gpu("Vulkan0", 6, 8, kind="igpu")
    assert choose_gpus([CPU, igpu], "auto") == [igpu]


def test_summary_line():
    device = gpu("Vulkan0", 6.1, 8.0)
    p = plan(SEVEN_B, [device], PLENTY, 8192, gpu_layers=24)
    assert summary(p, SEVEN_B, [device], "haswell", 8) == (
        'GPU: Vulkan0 "Vulkan0 card" 24/32 layers (6.1 of 8.0 GiB free) · CPU: haswell, 8 threads · ctx 8192')
    assert summary(plan(SEVEN_B, [], PLENTY, 4096), SEVEN_B, [], "x64", 2) == \
        "GPU: none · CPU: x64, 2 threads · ctx 4096"
