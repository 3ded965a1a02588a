"""Glue between hardware detection and the offload planner, for the CLI and --info."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from runtime import fit, hardware
from runtime.errors import ConfigError
from runtime.packed import ModelSource

log = logging.getLogger("furoshiki")


@dataclass(frozen=True)
class Placement:
    hardware: hardware.Hardware
    plan: fit.Plan
    summary: str

    def to_dict(self) -> dict:
        return {"summary": self.summary, "cpu_variant": self.hardware.cpu_variant,
                "cpu_variants": self.hardware.cpu_variants, "probe_error": self.hardware.probe_error,
                "devices": [d.__dict__ for d in self.hardware.devices], "plan": self.plan.to_dict()}


def model_layout(source: ModelSource, manifest: dict) -> fit.ModelLayout | None:
    if source.how == "embedded":
        # build.py stores the layout in the manifest; the GGUF inside is not a file gguf-py can open.
        layout = manifest.get("model", {}).get("layout")
        return fit.ModelLayout.from_dict(layout) if layout else None
    try:
        from builder.gguf_facts import GGUFError, read_model_card
    except ImportError:  # pragma: no cover - the stub bundles it
        return None
    try:
        return fit.ModelLayout.from_dict(read_model_card(source.path).layout())
    except GGUFError as exc:
        raise ConfigError(str(exc)) from None


def place(source: ModelSource, manifest: dict, gpu: str, gpu_layers: int | None, ctx: int,
          threads: int, verbose: bool = False) -> Placement:
    import psutil

    hw = hardware.load_backends(gpu=gpu, verbose=verbose)
    gpus = fit.choose_gpus(hw.devices, gpu) if gpu != "cpu" else []
    if gpu not in ("auto", "cpu") and not gpus:
        found = ", ".join(f"{d.name} ({d.description})" for d in hw.gpus) or "no GPU at all"
        why = f"; {hw.probe_error}" if hw.probe_error else ""
        raise ConfigError(f"--gpu {gpu}: no {gpu} device found (found {found}{why})")
    layout = model_layout(source, manifest)
    if layout is None:
        plan = fit.Plan(ctx=ctx, requested_ctx=ctx, notes=["model layout unknown: not offloading"])
        return Placement(hw, plan, f"GPU: none · CPU: {hw.cpu_variant}, {threads} threads · ctx {ctx}")
    plan = fit.plan(layout, gpus, psutil.virtual_memory().available, ctx, gpu_layers)
    for note in plan.notes:
        log.warning("%s", note)
    return Placement(hw, plan, fit.summary(plan, layout, gpus, hw.cpu_variant, threads))
