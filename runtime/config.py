"""Settings shared by the CLI, the engine and the HTTP app."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

API_KEY_ENV = "FUROSHIKI_API_KEY"
DEFAULT_PORT = 8080
DEFAULT_CTX = 4096
DEFAULT_MAX_QUEUE = 8
DEFAULT_MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class EngineConfig:
    model_path: str
    # A GGUF inside a larger file (a packed executable): where it starts and how long it is.
    model_offset: int | None = None
    model_length: int | None = None
    gpu: str = "auto"                         # auto | cpu | cuda | vulkan | metal
    n_gpu_layers: int = 0
    devices: tuple[str, ...] | None = None    # ggml device names to offload to (None: llama.cpp's choice)
    tensor_split: tuple[float, ...] | None = None
    ctx_size: int = DEFAULT_CTX
    threads: int | None = None
    max_queue: int = DEFAULT_MAX_QUEUE
    embeddings: bool = False
    verbose: bool = False


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY
    title: str | None = None
    # Defaults the chat page starts with; a packed executable's manifest sets them.
    defaults: dict = field(default_factory=dict)
    # What hardware was found and how the model was placed (shown in /props and on the page).
    hardware: dict = field(default_factory=dict)

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def browser_url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key_from_env() -> str | None:
    return os.environ.get(API_KEY_ENV) or None
