"""What a GGUF file is, read from its header: the model card `inspect` prints.

The header is checked by hand before gguf-py parses it, so absurd counts
from a corrupt file become a one-line `GGUFError` instead of a huge
allocation, and anything gguf-py trips over is reported the same way.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gguf
import numpy as np

from runtime.errors import FuroshikiError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_TENSORS = 1_000_000
MAX_KV = 100_000
DEFAULT_ALIGNMENT = 32
KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default KV cache type is f16


class GGUFError(FuroshikiError):
    """The file is not a GGUF furoshiki can use; the message says why, in one line."""


@dataclass(frozen=True)
class ModelCard:
    path: str
    file_size: int
    version: int
    architecture: str
    name: str
    n_params: int
    file_type: str
    context_length: int
    n_layers: int
    n_heads: int
    n_heads_kv: int
    n_embd: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    has_chat_template: bool
    tensor_count: int
    data_offset: int
    alignment: int
    tensor_bytes: int
    layer_bytes: list[int] = field(default_factory=list)   # weight bytes per block, for GPU layer fitting
    other_bytes: int = 0                                     # embeddings, output head, norms

    def kv_cache_bytes(self, n_ctx: int) -> int:
        return self.n_layers * n_ctx * self.n_heads_kv * (self.head_dim_k + self.head_dim_v) * KV_BYTES_PER_ELEMENT

    def ram_bytes(self, n_ctx: int | None = None) -> int:
        """Weights plus KV cache at n_ctx (default: min(model context, 4096))."""
        n_ctx = n_ctx or min(self.context_length or 4096, 4096)
        return self.tensor_bytes + self.kv_cache_bytes(n_ctx)

    def layout(self) -> dict:
        """What the runtime's offload planner needs (runtime.fit.ModelLayout)."""
        keys = ("n_layers", "layer_bytes", "other_bytes", "n_heads_kv", "head_dim_k", "head_dim_v", "n_embd",
                "n_vocab", "context_length")
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict:
        data = asdict(self)
        data["ram_bytes_default_ctx"] = self.ram_bytes()
        data["default_ctx"] = min(self.context_length or 4096, 4096)
        return data


def _check_header(path: Path, size: int) -> int:
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 4 or head[:4] != GGUF_MAGIC:
        raise GGUFError(f"{path.name} is not a GGUF file (it does not start with 'GGUF')")
    if len(head) < 24:
        raise GGUFError(f"{path.name} is truncated: the GGUF header needs 24 bytes, the file has {size}")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in SUPPORTED_VERSIONS:
        if struct.unpack(">I", head[4:8])[0] in SUPPORTED_VERSIONS:
            raise GGUFError(f"{path.name} is a big-endian GGUF; only little-endian GGUF is supported")
        raise GGUFError(f"{path.name} is GGUF version {version}; supported versions are "
                        f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
    # Each tensor record and key-value pair takes at least this many bytes.
    if n_tensors > MAX_TENSORS or n_tensors * 24 > size:
        raise GGUFError(f"{path.name} is corrupt: it claims {n_tensors} tensors in {size} bytes")
    if n_kv > MAX_KV or n_kv * 12 > size:
        raise GGUFError(f"{path.name} is corrupt: it claims {n_kv} metadata entries in {size} bytes")
    return version


def _value(reader: gguf.GGUFReader, key: str, kind: type, default=None, required: bool = False):
    fld = reader.get_field(key)
    if fld is None:
        if required:
            raise GGUFError(f"the GGUF has no '{key}'")
        return default
    try:
        value = fld.contents()
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise GGUFError(f"the GGUF's '{key}' is unreadable: {exc}") from None
    if kind is int and isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        value = max(value)  # per-layer values (e.g. head counts): the largest bounds memory
    if kind is int and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
        raise GGUFError(f"the GGUF's '{key}' should be an integer, found {type(value).__name__}")
    if kind is str and not isinstance(value, str):
        raise GGUFError(f"the GGUF's '{key}' should be a string, found {type(value).__name__}")
    return int(value) if kind is int else value


def _file_type(reader: gguf.GGUFReader, tensors) -> str:
    code = _value(reader, "general.file_type", int)
    if code is not None:
        try:
            return gguf.LlamaFileType(code).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    counts = Counter(t.tensor_type.name for t in tensors if len(t.shape) > 1)
    return counts.most_common(1)[0][0] if counts else "unknown"


def read_model_card(path: str | os.PathLike) -> ModelCard:
    """Read and check a GGUF's header. Raises GGUFError with a one-line reason."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise GGUFError(f"cannot read {path}: {exc.strerror or exc}") from None
    if path.is_dir():
        raise GGUFError(f"{path} is a directory, not a GGUF file")
    version = _check_header(path, size)
    try:
        reader = gguf.GGUFReader(path, "r")
        tensors = list(reader.tensors)
    except GGUFError:
        raise
    except Exception as exc:  # noqa: BLE001 - gguf-py raises many kinds on corrupt input
        detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise GGUFError(f"{path.name} is truncated or corrupt: {detail}") from None

    end = max((t.data_offset + int(t.n_bytes) for t in tensors), default=reader.data_offset)
    if end > size:
        raise GGUFError(f"{path.name} is truncated: tensor data needs {end} bytes, the file has {size}")

    arch = _value(reader, "general.architecture", str, required=True)
    n_embd = _value(reader, f"{arch}.embedding_length", int, 0)
    n_heads = _value(reader, f"{arch}.attention.head_count", int, 0)
    n_heads_kv = _value(reader, f"{arch}.attention.head_count_kv", int, n_heads)
    head_dim = n_embd // n_heads if n_heads else 0
    n_layers = _value(reader, f"{arch}.block_count", int, 0)
    tokens = reader.get_field("tokenizer.ggml.tokens")
    layer_bytes = [0] * n_layers
    other = 0
    for t in tensors:
        parts = t.name.split(".")
        if parts[0] == "blk" and len(parts) > 1 and parts[1].isdigit() and int(parts[1]) < n_layers:
            layer_bytes[int(parts[1])] += int(t.n_bytes)
        else:
            other += int(t.n_bytes)
    return ModelCard(
        path=str(path),
        file_size=size,
        version=version,
        architecture=arch,
        name=_value(reader, "general.name", str) or path.stem,
        n_params=int(sum(int(t.n_elements) for t in tensors)),
        file_type=_file_type(reader, tensors),
        context_length=_value(reader, f"{arch}.context_length", int, 0),
        n_layers=n_layers,
        n_heads=n_heads,
        n_heads_kv=n_heads_kv,
        n_embd=n_embd,
        head_dim_k=_value(reader, f"{arch}.attention.key_length", int, head_dim),
        head_dim_v=_value(reader, f"{arch}.attention.value_length", int, head_dim),
        n_vocab=len(tokens.data) if tokens is not None else 0,
        has_chat_template=reader.get_field("tokenizer.chat_template") is not None,
        tensor_count=len(tensors),
        data_offset=int(reader.data_offset),
        alignment=_value(reader, "general.alignment", int, DEFAULT_ALIGNMENT),
        tensor_bytes=sum(layer_bytes) + other,
        layer_bytes=layer_bytes,
        other_bytes=other,
    )


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def card_rows(card: ModelCard) -> list[tuple[str, str]]:
    return [
        ("name", card.name),
        ("architecture", card.architecture),
        ("parameters", f"{card.n_params / 1e9:.2f} B" if card.n_params >= 1e8 else f"{card.n_params:,}"),
        ("quantisation", card.file_type),
        ("context length", f"{card.context_length:,}"),
        ("layers / heads / kv heads", f"{card.n_layers} / {card.n_heads} / {card.n_heads_kv}"),
        ("embedding size", str(card.n_embd)),
        ("vocabulary", f"{card.n_vocab:,}"),
        ("chat template", "yes" if card.has_chat_template else "no (ChatML fallback)"),
        ("GGUF version", str(card.version)),
        ("tensors", f"{card.tensor_count} from offset {card.data_offset} (aligned to {card.alignment})"),
        ("file size", human_bytes(card.file_size)),
        (f"RAM at ctx {min(card.context_length or 4096, 4096)}", human_bytes(card.ram_bytes())),
    ]
