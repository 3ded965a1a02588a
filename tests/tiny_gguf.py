"""Write small but real llama-architecture GGUF models for tests, demos and benchmarks.

The weights are random, so the text is gibberish, but real llama.cpp loads and
runs the file: tokenizer, chat template, attention, sampling, grammar and all.

    python -m tests.tiny_gguf out.gguf                      # ~400 KB, loads in ms
    python -m tests.tiny_gguf big.gguf --embd 768 --layers 12 --dtype q8_0   # ~100M params

The vocabulary is SentencePiece-style ("llama" tokenizer model) with byte
fallback, so any UTF-8 text, Japanese included, tokenizes. Printable ASCII,
a handful of kana and the ChatML control tokens get pieces of their own.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
IM_START_ID, IM_END_ID = 3, 4
_CONTROL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
_KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんー。、"


@dataclass(frozen=True)
class TinyModelSpec:
    n_embd: int = 64
    n_layers: int = 2
    n_head: int = 4
    n_head_kv: int = 4
    n_ff: int = 128
    context_length: int = 4096
    dtype: str = "f32"  # f32, f16 or q8_0 for the large matrices
    chat_template: str | None = CHATML_TEMPLATE
    name: str = "tiny-test-llama"
    seed: int = 1234


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Token pieces, scores and types for a byte-fallback SPM vocabulary."""
    tokens: list[str] = list(_CONTROL)
    types = [gguf.TokenType.UNKNOWN] + [gguf.TokenType.CONTROL] * (len(_CONTROL) - 1)
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["\u2581"] + [chr(c) for c in range(0x21, 0x7F)]
    pieces += ["\u2581" + chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += list(_KANA)
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    # SPM prefers higher scores when merging; longer pieces win.
    scores = [0.0] * (len(_CONTROL) + 256) + [-100.0 + len(p) for p in pieces]
    return tokens, scores, [int(t) for t in types]


def _matrix(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)


def _add(writer: gguf.GGUFWriter, name: str, data: np.ndarray, dtype: str) -> None:
    if data.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, data)
    elif dtype == "f16":
        writer.add_tensor(name, data.astype(np.float16))
    elif dtype == "q8_0":
        qtype = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    else:
        raise ValueError(f"unknown dtype {dtype!r}; expected f32, f16 or q8_0")


def write_tiny_gguf(path: str | Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Write a random-weight llama GGUF to `path` and return the path."""
    path = Path(path)
    rng = np.random.default_rng(spec.seed)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)
    head_dim = spec.n_embd // spec.n_head
    n_embd_kv = head_dim * spec.n_head_kv

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(spec.name)
    writer.add_context_length(spec.context_length)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layers)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[spec.dtype]
    writer.add_file_type(file_type)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(IM_END_ID if spec.chat_template else EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if spec.chat_template:
        writer.add_chat_template(spec.chat_template)

    # Readable gibberish: favour the printable pieces over raw bytes and control tokens.
    output = _matrix(rng, n_vocab, spec.n_embd)
    output[: len(_CONTROL) + 256] *= 0.2
    _add(writer, "token_embd.weight", _matrix(rng, n_vocab, spec.n_embd), spec.dtype)
    _add(writer, "output_norm.weight", np.ones(spec.n_embd, dtype=np.float32), spec.dtype)
    _add(writer, "output.weight", output * 4.0, spec.dtype)
    for i in range(spec.n_layers):
        blk = f"blk.{i}"
        _add(writer, f"{blk}.attn_norm.weight", np.ones(spec.n_embd, dtype=np.float32), spec.dtype)
        _add(writer, f"{blk}.attn_q.weight", _matrix(rng, spec.n_embd, spec.n_embd), spec.dtype)
        _add(writer, f"{blk}.attn_k.weight", _matrix(rng, n_embd_kv, spec.n_embd), spec.dtype)
        _add(writer, f"{blk}.attn_v.weight", _matrix(rng, n_embd_kv, spec.n_embd), spec.dtype)
        _add(writer, f"{blk}.attn_output.weight", _matrix(rng, spec.n_embd, spec.n_embd), spec.dtype)
        _add(writer, f"{blk}.ffn_norm.weight", np.ones(spec.n_embd, dtype=np.float32), spec.dtype)
        _add(writer, f"{blk}.ffn_gate.weight", _matrix(rng, spec.n_ff, spec.n_embd), spec.dtype)
        _add(writer, f"{blk}.ffn_up.weight", _matrix(rng, spec.n_ff, spec.n_embd), spec.dtype)
        _add(writer, f"{blk}.ffn_down.weight", _matrix(rng, spec.n_embd, spec.n_ff), spec.dtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--embd", type=int, default=TinyModelSpec.n_embd)
    parser.add_argument("--layers", type=int, default=TinyModelSpec.n_layers)
    parser.add_argument("--heads", type=int, default=TinyModelSpec.n_head)
    parser.add_argument("--ff", type=int, help="feed-forward size (default 4 x embd for big models)")
    parser.add_argument("--ctx", type=int, default=TinyModelSpec.context_length)
    parser.add_argument("--dtype", choices=["f32", "f16", "q8_0"], default="f32")
    parser.add_argument("--no-chat-template", action="store_true")
    args = parser.parse_args(argv)
    spec = TinyModelSpec(
        n_embd=args.embd, n_layers=args.layers, n_head=args.heads, n_head_kv=args.heads,
        n_ff=args.ff or (TinyModelSpec.n_ff if args.embd == TinyModelSpec.n_embd else 4 * args.embd),
        context_length=args.ctx, dtype=args.dtype,
        chat_template=None if args.no_chat_template else CHATML_TEMPLATE,
    )
    path = write_tiny_gguf(args.out, spec)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
