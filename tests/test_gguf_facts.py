"""GGUF inspection: the model card, and a corpus of broken files each refused in one line."""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from builder.gguf_facts import GGUFError, read_model_card
from tests.tiny_gguf import TinyModelSpec, write_tiny_gguf

REPO = Path(__file__).resolve().parent.parent


def inspect(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "build.py", "inspect", str(path), *extra], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_model_card_of_the_tiny_model(tiny_model):
    card = read_model_card(tiny_model)
    assert (card.architecture, card.name, card.file_type) == ("llama", "tiny-test-llama", "F32")
    assert (card.n_layers, card.n_heads, card.n_heads_kv, card.n_embd, card.context_length) == (2, 4, 4, 64, 4096)
    assert card.has_chat_template and card.n_vocab == 431 and card.version == 3
    assert card.n_params == 137408  # what llama.cpp reports for the same file (see test_api /v1/models)
    assert card.data_offset % card.alignment == 0 and card.file_size == tiny_model.stat().st_size
    assert sum(card.layer_bytes) + card.other_bytes == card.tensor_bytes
    # weights + f16 KV cache: 2 layers x 4096 ctx x 4 kv heads x (16 + 16) dims x 2 bytes
    assert card.ram_bytes() == card.tensor_bytes + 2 * 4096 * 4 * 32 * 2


def test_inspect_table_and_json(tiny_model):
    table = inspect(tiny_model)
    assert table.returncode == 0 and "tiny-test-llama" in table.stdout and "RAM at ctx 4096" in table.stdout
    data = json.loads(inspect(tiny_model, "--json").stdout)
    assert data["n_params"] == 137408 and data["has_chat_template"] is True


def test_quantised_model_card(tmp_path):
    path = write_tiny_gguf(tmp_path / "q8.gguf", TinyModelSpec(n_embd=64, dtype="q8_0"))
    assert read_model_card(path).file_type == "Q8_0"


def _patched(src: Path, dst: Path, offset: int, data: bytes) -> Path:
    raw = bytearray(src.read_bytes())
    raw[offset:offset + len(data)] = data
    dst.write_bytes(bytes(raw))
    return dst


def _wrong_type(tmp_path: Path) -> Path:
    path = tmp_path / "wrong-type.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("llama.context_length", "four thousand")
    w.add_tensor("token_embd.weight", __import__("numpy").zeros((4, 4), dtype="float32"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


CORPUS = {
    "bad magic": (lambda src, d: _patched(src, d, 0, b"GGML"), "not a GGUF file"),
    "empty": (lambda src, d: (d.write_bytes(b""), d)[1], "not a GGUF file"),
    "truncated header": (lambda src, d: (d.write_bytes(src.read_bytes()[:13]), d)[1], "truncated"),
    "unsupported version": (lambda src, d: _patched(src, d, 4, struct.pack("<I", 99)), "version 99"),
    "big-endian": (lambda src, d: _patched(src, d, 4, struct.pack(">I", 3)), "big-endian"),
    "absurd tensor count": (lambda src, d: _patched(src, d, 8, struct.pack("<Q", 2 ** 40)), "claims 1099511627776"),
    "absurd kv count": (lambda src, d: _patched(src, d, 16, struct.pack("<Q", 2 ** 33)), "metadata entries"),
    "truncated tensors": (lambda src, d: (d.write_bytes(src.read_bytes()[: src.stat().st_size // 2]), d)[1],
                          "truncated"),
    "absurd string length": (lambda src, d: _patched(src, d, 24, struct.pack("<Q", 2 ** 50)), "corrupt"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_malformed_gguf_gets_a_one_line_refusal(case, tiny_model, tmp_path):
    make, expected = CORPUS[case]
    bad = make(tiny_model, tmp_path / f"{case.replace(' ', '-')}.gguf")
    with pytest.raises(GGUFError, match=expected):
        read_model_card(bad)
    result = inspect(bad)
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert expected in result.stderr


def test_wrong_value_type_is_named(tmp_path):
    with pytest.raises(GGUFError, match="'llama.context_length' should be an integer, found str"):
        read_model_card(_wrong_type(tmp_path))


def test_random_header_damage_never_escapes_as_a_traceback(tiny_model, tmp_path):
    """Bounded fuzz: flip bytes in the header and metadata; the answer is a card or a GGUFError."""
    raw = tiny_model.read_bytes()
    header_end = read_model_card(tiny_model).data_offset
    rng = random.Random(20261122)
    for i in range(150):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(4, header_end)] = rng.randrange(256)
        path = tmp_path / f"fuzz{i}.gguf"
        path.write_bytes(bytes(data))
        try:
            read_model_card(path)
        except GGUFError:
            pass
