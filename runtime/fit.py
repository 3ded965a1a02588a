"""Decide where the model goes: how many layers on which GPUs, and a context that fits in RAM.

llama.cpp's own fitting (`--fit`, common/fit.cpp) is not in its C API, so
this is ours, and it is shown to the user at startup, in --info and in
/props. The arithmetic uses per-layer weight bytes from the GGUF, the KV
cache at the chosen context (f16), llama.cpp's compute buffer, and a margin,
against each device's free memory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from runtime.hardware import Device

GIB = 1024 ** 3
MIB = 1024 ** 2
N_UBATCH = 512
KV_BYTES = 2            # f16 K and V
RAM_RESERVE = 512 * MIB  # for the OS, Python and the server
MIN_CTX = 512
CTX_STEP = 256


@dataclass(frozen=True)
class ModelLayout:
    """What memory a model needs, from its GGUF header."""

    n_layers: int
    layer_bytes: tuple[int, ...]
    other_bytes: int             # token embeddings, output head, final norm
    n_heads_kv: int
    head_dim_k: int
    head_dim_v: int
    n_embd: int
    n_vocab: int
    context_length: int

    @classmethod
    def from_dict(cls, d: dict) -> ModelLayout:
        return cls(n_layers=d["n_layers"], layer_bytes=tuple(d["layer_bytes"]), other_bytes=d["other_bytes"],
                   n_heads_kv=d["n_heads_kv"], head_dim_k=d["head_dim_k"], head_dim_v=d["head_dim_v"],
                   n_embd=d["n_embd"], n_vocab=d["n_vocab"], context_length=d["context_length"])

    def kv_per_layer(self, ctx: int) -> int:
        return ctx * self.n_heads_kv * (self.head_dim_k + self.head_dim_v) * KV_BYTES

    @property
    def output_bytes(self) -> int:
        # The output head is about as big as the token embeddings; the other half of other_bytes.
        return self.other_bytes // 2

    def compute_bytes(self) -> int:
        """llama.cpp's compute buffer for one micro-batch: logits plus activations, roughly."""
        return N_UBATCH * (self.n_vocab + 16 * self.n_embd) * 4


@dataclass
class Plan:
    n_gpu_layers: int = 0
    devices: list[str] = field(default_factory=list)      # ggml device names used for offload
    tensor_split: list[float] | None = None
    ctx: int = 0
    requested_ctx: int = 0
    gpu_bytes: dict[str, int] = field(default_factory=dict)
    ram_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def gpu_margin(device: Device) -> int:
    return max(512 * MIB, device.total // 20)


def _usable(device: Device, layout: ModelLayout) -> int:
    return max(0, device.free - gpu_margin(device) - layout.compute_bytes())


def choose_gpus(devices: list[Device], backend: str) -> list[Device]:
    """GPUs to offload to: of the requested backend, discrete before integrated, biggest first.

    A card visible through two backends (CUDA and Vulkan) is used through one:
    the backend of the biggest device wins.
    """
    gpus = [d for d in devices if d.kind in ("gpu", "igpu")]
    if backend not in ("auto", "cpu"):
        gpus = [d for d in gpus if d.backend.lower() == backend]
    if not gpus:
        return []
    discrete = [d for d in gpus if d.kind == "gpu"] or gpus
    best = max(discrete, key=lambda d: d.free)
    return sorted((d for d in discrete if d.backend == best.backend), key=lambda d: -d.free)


def plan(layout: ModelLayout, gpus: list[Device], ram_available: int, ctx: int,
         gpu_layers: int | None = None) -> Plan:
    result = Plan(ctx=ctx, requested_ctx=ctx)
    n = layout.n_layers
    usable = {d.name: _usable(d, layout) for d in gpus}
    total_usable = sum(usable.values())

    if gpus and gpu_layers is None:
        per_layer = [b + layout.kv_per_layer(ctx) for b in layout.layer_bytes]
        spent, k = 0, 0
        for size in reversed(per_layer):       # llama.cpp offloads the last layers first
            if spent + size > total_usable:
                break
            spent += size
            k += 1
        if k == n and spent + layout.output_bytes <= total_usable:
            k = n + 1                           # the output head goes too: a full offload
        result.n_gpu_layers = k
    elif gpus:
        result.n_gpu_layers = max(0, min(gpu_layers, n + 1))
        if gpu_layers > n + 1:
            result.notes.append(f"--gpu-layers {gpu_layers} is more than the model's {n + 1}; using {n + 1}")
    elif gpu_layers:
        result.notes.append("--gpu-layers ignored: no GPU is in use")

    offloaded = min(result.n_gpu_layers, n)
    if result.n_gpu_layers > 0:
        result.devices = [d.name for d in gpus]
        if len(gpus) > 1:
            weights = [usable[d.name] or 1 for d in gpus]
            result.tensor_split = [w / sum(weights) for w in weights]
        planned = sum(layout.layer_bytes[n - offloaded:]) + offloaded * layout.kv_per_layer(ctx)
        if result.n_gpu_layers > n:
            planned += layout.output_bytes
        shares = result.tensor_split or [1.0] * len(gpus)
        result.gpu_bytes = {d.name: int(planned * share) + layout.compute_bytes()
                            for d, share in zip(gpus, shares, strict=True)}
        if gpu_layers is not None and planned > total_usable:
            result.notes.append(f"--gpu-layers {gpu_layers} needs about {planned / GIB:.1f} GiB but "
                                f"{total_usable / GIB:.1f} GiB is free: expect an out-of-memory error")

    # The rest lives in RAM: CPU layers' weights and KV, embeddings, and the compute buffer.
    cpu_layers = n - offloaded
    fixed = sum(layout.layer_bytes[:cpu_layers]) + layout.other_bytes + layout.compute_bytes() + RAM_RESERVE
    if result.n_gpu_layers > n:
        fixed -= layout.output_bytes
    per_token = cpu_layers * layout.kv_per_layer(1)
    need = fixed + per_token * ctx
    if need > ram_available and per_token > 0:
        fit_ctx = (ram_available - fixed) // per_token // CTX_STEP * CTX_STEP
        new_ctx = max(MIN_CTX, min(ctx, fit_ctx))
        if new_ctx < ctx:
            result.ctx = new_ctx
            result.notes.append(f"context shrunk from {ctx} to {new_ctx} tokens to fit "
                                f"{ram_available / GIB:.1f} GiB of free RAM")
        if fit_ctx < MIN_CTX:
            result.notes.append(f"the model needs about {(fixed + per_token * MIN_CTX) / GIB:.1f} GiB but "
                                f"{ram_available / GIB:.1f} GiB of RAM is free: it will run slowly, from disk")
        need = fixed + per_token * result.ctx
    result.ram_bytes = need
    return result


def summary(result: Plan, layout: ModelLayout, gpus: list[Device], cpu_variant: str | None, threads: int) -> str:
    """The one startup line: what was chosen, and why it fits."""
    if result.n_gpu_layers and gpus:
        shown = min(result.n_gpu_layers, layout.n_layers)
        used = [d for d in gpus if d.name in result.devices]
        free = sum(d.free for d in used) / GIB
        total = sum(d.total for d in used) / GIB
        names = " + ".join(f'{d.name} "{d.description}"' for d in used)
        gpu = f"GPU: {names} {shown}/{layout.n_layers} layers ({free:.1f} of {total:.1f} GiB free)"
    elif gpus:
        gpu = f'GPU: {gpus[0].name} "{gpus[0].description}" 0/{layout.n_layers} layers (not enough free memory)'
    else:
        gpu = "GPU: none"
    return f"{gpu} · CPU: {cpu_variant or 'default'}, {threads} threads · ctx {result.ctx}"
