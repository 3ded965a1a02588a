"""The one seam furoshiki cuts into `llama_cpp.Llama`.

llama-cpp-python gives no per-token hook that works everywhere: its chat
handlers drop a caller's `stopping_criteria`, and an exception raised in a
`logits_processor` is swallowed by the ctypes callback that runs it. So the
subclass below wraps the two methods every generation goes through:

* `eval()` runs the prompt in `n_batch` slices and checks for cancellation
  between them, so a long prompt stops within one batch;
* `sample()` checks before every token, so a generation stops within one token.

The hook also records what was evaluated and when, which gives exact
per-request timings and shows the KV prefix reuse across chat turns.

`CancellableLlama(model_path=exe, model_offset=N)` loads a GGUF that starts N
bytes into a larger file (a packed executable) with llama.cpp's
`llama_model_load_from_file_ptr`, so the tensors are memory-mapped in place
and nothing is extracted or copied.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import llama_cpp
import llama_cpp._internals as internals

from runtime.errors import GenerationCancelled


@dataclass
class TokenHook:
    """Per-request probe: cancellation check plus counters and timings."""

    should_stop: Callable[[], bool]
    started: float = field(default_factory=time.perf_counter)
    prompt_tokens: int = 0          # whole prompt, cached part included
    prompt_evaluated: int = 0       # prompt tokens actually run through the model
    prompt_seconds: float = 0.0
    first_token_at: float | None = None
    sampled: list[int] = field(default_factory=list)

    def check(self) -> None:
        if self.should_stop():
            raise GenerationCancelled()

    @property
    def ttft_seconds(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def generation_seconds(self) -> float:
        if self.first_token_at is None:
            return 0.0
        return time.perf_counter() - self.first_token_at


class _CFile:
    """A C `FILE *` opened with the same C runtime llama.cpp uses, positioned at an offset."""

    def __init__(self, path: str, offset: int):
        if sys.platform == "win32":
            crt = ctypes.CDLL("ucrtbase")
            crt._wfopen.restype = ctypes.c_void_p
            crt._wfopen.argtypes = [ctypes.c_wchar_p, ctypes.c_wchar_p]
            crt._fseeki64.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
            crt.fclose.argtypes = [ctypes.c_void_p]
            self._crt, self.fp = crt, crt._wfopen(path, "rb")
            seek = crt._fseeki64
        else:
            libc = ctypes.CDLL(ctypes.util.find_library("c") if sys.platform == "darwin" else None)
            libc.fopen.restype = ctypes.c_void_p
            libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            libc.fseeko.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
            libc.fclose.argtypes = [ctypes.c_void_p]
            self._crt, self.fp = libc, libc.fopen(path.encode(), b"rb")
            seek = libc.fseeko
        if not self.fp:
            raise ValueError(f"cannot open {path}")
        if seek(self.fp, offset, 0) != 0:
            self.close()
            raise ValueError(f"cannot seek to byte {offset} of {path}")

    def close(self) -> None:
        if self.fp:
            self._crt.fclose(self.fp)
            self.fp = None


class _EmbeddedModel(internals.LlamaModel):
    """llama-cpp-python's LlamaModel, loaded from (file, offset) instead of a path."""

    def __init__(self, *, path_model: str, params, verbose: bool = True, offset: int = 0):
        self.path_model, self.params, self.verbose = path_model, params, verbose
        self._exit_stack = contextlib.ExitStack()
        self.sampler, self.custom_samplers = None, []
        self.model = None
        cfile = _CFile(path_model, offset)
        # llama.cpp does not own the FILE (owns_fp = false); keep it open as long as the model.
        self._exit_stack.callback(cfile.close)
        with internals.suppress_stdout_stderr(disable=verbose):
            model = llama_cpp.llama_model_load_from_file_ptr(cfile.fp, params)
        if not model:
            self._exit_stack.close()
            raise ValueError(f"Failed to load model from byte {offset} of {path_model}")
        self.model, self.vocab = model, llama_cpp.llama_model_get_vocab(model)

        def free_model() -> None:
            if self.model is not None:
                llama_cpp.llama_model_free(self.model)
                self.model = None

        self._exit_stack.callback(free_model)


_load_lock = threading.Lock()


def _device_array(names: list[str]):
    """A NULL-terminated ggml_backend_dev_t[] of the named devices, for llama_model_params.devices."""
    from runtime.hardware import _ggml, lib_dir

    lib = _ggml(lib_dir())
    by_name = {}
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        by_name[lib.ggml_backend_dev_name(dev).decode()] = dev
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"unknown device {missing[0]!r}; available: {', '.join(by_name)}")
    return (ctypes.c_void_p * (len(names) + 1))(*[by_name[n] for n in names], None)


@contextlib.contextmanager
def _custom_model_load(offset: int | None, devices: list[str] | None) -> Iterator[None]:
    """While Llama.__init__ runs, build its model from (path, offset) and/or on chosen devices only,
    and its context with flash attention on "auto", as llama-server does (llama-cpp-python can only
    force it on, which fails where a backend lacks it, or off, which costs ~20% on the CPU)."""
    original = internals.LlamaModel
    original_context = internals.LlamaContext

    def context_factory(**kw):
        kw["params"].flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        return original_context(**kw)

    def factory(**kw):
        keep = None
        if devices is not None:
            keep = _device_array(devices)
            kw["params"].devices = ctypes.cast(keep, ctypes.c_void_p)
        model = original(**kw) if offset is None else _EmbeddedModel(**kw, offset=offset)
        model._device_array = keep  # llama.cpp copies the list at load; keep it alive until then anyway
        return model

    with _load_lock:
        internals.LlamaModel = factory
        internals.LlamaContext = context_factory
        try:
            yield
        finally:
            internals.LlamaModel = original
            internals.LlamaContext = original_context


class CancellableLlama(llama_cpp.Llama):
    token_hook: TokenHook | None = None

    def __init__(self, *args, model_offset: int | None = None, devices: list[str] | None = None, **kwargs):
        with _custom_model_load(model_offset, devices):
            super().__init__(*args, **kwargs)

    def eval(self, tokens: Sequence[int]) -> None:
        hook = self.token_hook
        if hook is None or hook.first_token_at is not None:
            return super().eval(tokens)
        # Still in the prompt: evaluate it slice by slice so a cancel lands quickly.
        t0 = time.perf_counter()
        for i in range(0, len(tokens), self.n_batch):
            hook.check()
            super().eval(tokens[i:i + self.n_batch])
        hook.prompt_evaluated += len(tokens)
        hook.prompt_seconds += time.perf_counter() - t0

    def sample(self, *args, **kwargs) -> int:
        hook = self.token_hook
        if hook is None:
            return super().sample(*args, **kwargs)
        hook.check()
        if hook.first_token_at is None:
            hook.prompt_tokens = self.n_tokens
        token = super().sample(*args, **kwargs)
        if hook.first_token_at is None:
            hook.first_token_at = time.perf_counter()
        hook.sampled.append(token)
        return token

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._model.vocab, token))
