"""What a packed executable knows about itself: which model to serve, --info, --verify, --extract-model."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from runtime import __version__
from runtime.errors import ConfigError
from runtime.payload import NoPayload, Payload, PayloadError, read_payload, sidecar_path

EXECUTABLE_ENV = "FUROSHIKI_EXECUTABLE"  # lets tests and tools point the runtime at a packed file


@dataclass(frozen=True)
class ModelSource:
    path: str
    offset: int | None = None
    length: int | None = None
    how: str = "file"          # file | embedded | sidecar

    def describe(self) -> str:
        if self.how == "embedded":
            name = Path(self.path).name
            return f"embedded in {name} at byte {self.offset:,} ({self.length:,} bytes, mmap'd in place)"
        return f"{self.how} {self.path}"


def current_executable() -> Path | None:
    exe = os.environ.get(EXECUTABLE_ENV) or (sys.executable if getattr(sys, "frozen", False) else None)
    return Path(exe).resolve() if exe else None


class Embedded:
    """The running executable's payload, read lazily so --model works even beside a damaged one."""

    def __init__(self, executable: Path | None):
        self.executable = executable
        self._payload: Payload | None = None
        self._error: PayloadError | None = None
        if executable is not None:
            try:
                self._payload = read_payload(executable)
            except NoPayload:
                pass
            except PayloadError as exc:
                self._error = exc

    @property
    def present(self) -> bool:
        return self._payload is not None or self._error is not None

    def payload(self) -> Payload:
        if self._error is not None:
            raise self._error
        if self._payload is None:
            raise ConfigError("this is not a packed furoshiki executable (no embedded model)")
        return self._payload

    @property
    def manifest(self) -> dict:
        return self._payload.manifest if self._payload else {}

    def model_source(self, model_option: str | None) -> ModelSource:
        if model_option:
            return ModelSource(model_option)
        if self.executable is not None:
            side = sidecar_path(self.executable)
            if side.is_file() and not (self._payload and self._payload.trailer.sidecar):
                return ModelSource(str(side), how="sidecar")
        if self.present:
            p = self.payload()
            if p.trailer.sidecar:
                return ModelSource(str(p.model_path), how="sidecar")
            return ModelSource(str(p.model_path), p.model_offset, p.length, "embedded")
        raise ConfigError("no model to serve: pass --model PATH/TO/MODEL.gguf")


def runtime_versions() -> dict:
    import llama_cpp

    return {"furoshiki": __version__, "llama_cpp_python": llama_cpp.__version__,
            "python": platform.python_version(), "platform": f"{sys.platform}-{platform.machine()}"}


def info(embedded: Embedded) -> dict:
    p = embedded.payload()
    m = p.manifest
    return {
        "executable": str(p.executable),
        "name": m.get("name"),
        "title": m.get("title"),
        "defaults": m.get("defaults", {}),
        "model": m.get("model", {}),
        "payload": {"mode": "sidecar" if p.trailer.sidecar else "embedded", "file": str(p.model_path),
                    "offset": p.model_offset, "length": p.length, "sha256": p.sha256,
                    "format_version": p.trailer.version},
        "built_with": m.get("versions", {}),
        "built_at": m.get("built_at"),
        "runtime": runtime_versions(),
    }


def format_info(data: dict) -> str:
    model, payload = data["model"], data["payload"]
    lines = [
        f"{data['title'] or data['name']}  ({Path(data['executable']).name})",
        f"  model      {model.get('name', '?')}  {model.get('architecture', '')} {model.get('file_type', '')}".rstrip(),
        f"  source     {model.get('source', '?')}",
        f"  payload    {payload['mode']} in {payload['file']} at byte {payload['offset']:,}, "
        f"{payload['length']:,} bytes",
        f"  sha256     {payload['sha256']}",
        "  defaults   " + ", ".join(f"{k}={v!r}" for k, v in sorted(data["defaults"].items())),
        f"  built      {data.get('built_at') or '?'} with "
        + ", ".join(f"{k} {v}" for k, v in sorted(data["built_with"].items())),
        "  runtime    " + ", ".join(f"{k} {v}" for k, v in sorted(data["runtime"].items())),
    ]
    hw = data.get("hardware")
    if hw:
        lines.append(f"  hardware   {hw['summary']}")
        for d in hw["devices"]:
            lines.append(f"             {d['name']:<9} {d['kind']:<5} {d['description']}  "
                         f"{d['free'] / 2**30:.1f} of {d['total'] / 2**30:.1f} GiB free")
        if hw.get("probe_error"):
            lines.append(f"             GPU probe failed: {hw['probe_error']}")
    return "\n".join(lines)
