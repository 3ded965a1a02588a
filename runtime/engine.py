"""The engine: one llama.cpp context, one worker thread, a bounded FIFO in front.

llama.cpp's context is not safe to share, so exactly one thread (the worker)
ever touches it. HTTP threads submit a `Job` and read its events; when the
queue is full they get `ServerBusy` (HTTP 503 with Retry-After) instead of
piling up. Each job can be cancelled at any time (the client disconnected,
the user pressed Stop, the server is shutting down) and the worker notices
within one token, through `CancellableLlama`.

Consecutive requests share the KV cache: llama-cpp-python keeps the tokens it
evaluated last and only runs the part of a new prompt past the common prefix,
so turn N+1 of a chat evaluates only what was added.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jinja2

from runtime import hardware
from runtime.config import EngineConfig
from runtime.errors import (
    APIError,
    GenerationCancelled,
    InvalidRequest,
    ModelLoadError,
    ModelLoading,
    NotSupported,
    PromptTooLong,
    ServerBusy,
)
from runtime.llama_model import CancellableLlama, TokenHook

log = logging.getLogger("furoshiki.engine")

FALLBACK_CHAT_FORMAT = "chatml"


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    path: str
    n_ctx: int
    n_ctx_train: int
    n_vocab: int
    n_params: int
    size_bytes: int
    chat_template: str | None
    chat_format: str
    embeddings: bool
    system_info: str
    llama_cpp_python: str


@dataclass
class JobStats:
    """What happened to one request; becomes `usage` and `timings` in responses."""

    finish: str = "stop"           # stop | length | cancelled | error
    stop_type: str = "eos"         # eos | word | limit (llama-server's names)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    prompt_ms: float = 0.0
    predicted_ms: float = 0.0
    ttft_ms: float | None = None
    queued_ms: float = 0.0

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    def timings(self) -> dict:
        evaluated = self.prompt_tokens - self.cached_tokens
        return {
            "cache_n": self.cached_tokens,
            "prompt_n": evaluated,
            "prompt_ms": round(self.prompt_ms, 3),
            "prompt_per_second": _rate(evaluated, self.prompt_ms),
            "predicted_n": self.completion_tokens,
            "predicted_ms": round(self.predicted_ms, 3),
            "predicted_per_second": _rate(self.completion_tokens, self.predicted_ms),
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 3),
            "queued_ms": round(self.queued_ms, 3),
        }


def _rate(n: int, ms: float) -> float | None:
    return round(n * 1000.0 / ms, 2) if ms > 0 and n > 0 else None


class Job:
    """One request's trip through the engine. Iterate it to receive its events."""

    def __init__(self, kind: str, params: dict[str, Any], stream: bool,
                 is_disconnected: Callable[[], bool] | None = None):
        self.kind = kind
        self.params = params
        self.stream = stream
        self._is_disconnected = is_disconnected
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self.cancel_reason: str | None = None
        self.submitted = time.perf_counter()
        self.stats = JobStats()

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._cancelled.is_set():
            self.cancel_reason = reason
            self._cancelled.set()

    def should_stop(self) -> bool:
        if self._cancelled.is_set():
            return True
        if self._is_disconnected is not None and self._is_disconnected():
            self.cancel("client disconnected")
            return True
        return False

    # Worker side.
    def _emit(self, kind: str, payload: Any = None) -> None:
        self._events.put((kind, payload))

    # HTTP side.
    def events(self) -> Iterator[tuple[str, Any]]:
        """Yield ("chunk", c) for streams or ("result", r), then ("done", stats).

        Raises the job's APIError if it failed before or during generation.
        """
        while True:
            kind, payload = self._events.get()
            if kind == "error":
                raise payload
            yield kind, payload
            if kind == "done":
                return


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self._llm: CancellableLlama | None = None
        self.info: ModelInfo | None = None
        self.load_error: str | None = None
        self._ready = threading.Event()
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max(0, config.max_queue) or 1)
        self._worker: threading.Thread | None = None
        self._current: Job | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.last_stats: JobStats | None = None
        self.jobs_done = 0
        self._avg_job_seconds = 5.0

    # ---- lifecycle -------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def load(self) -> ModelInfo:
        """Load the model (blocking) and start the worker. Raises ModelLoadError."""
        path = self.config.model_path
        if not os.path.isfile(path):
            raise ModelLoadError(f"model file not found: {path}")
        threads = self.config.threads or default_threads()
        t0 = time.perf_counter()
        # Backends are loadable modules: without this, llama.cpp has no CPU backend at all.
        hardware.load_backends(gpu=self.config.gpu, verbose=self.config.verbose)
        gpu_kwargs = {}
        if self.config.n_gpu_layers:
            gpu_kwargs = {"n_gpu_layers": self.config.n_gpu_layers,
                          "devices": list(self.config.devices) if self.config.devices else None}
            if self.config.tensor_split:
                gpu_kwargs["tensor_split"] = list(self.config.tensor_split)
        try:
            llm = CancellableLlama(
                **gpu_kwargs,
                model_path=path,
                model_offset=self.config.model_offset,
                n_ctx=self.config.ctx_size,
                n_batch=2048,  # llama-server's default: long prompts in fewer, larger decodes
                n_ubatch=512,
                n_threads=threads,
                n_threads_batch=threads,
                embedding=self.config.embeddings,
                verbose=self.config.verbose,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            self.load_error = f"llama.cpp could not load {path}: {exc}"
            raise ModelLoadError(self.load_error) from exc

        template = llm.metadata.get("tokenizer.chat_template")
        if template is None:
            llm.chat_format = FALLBACK_CHAT_FORMAT
            log.warning("the GGUF has no chat template; using the %s fallback", FALLBACK_CHAT_FORMAT)
        else:
            log.info("chat template: from the GGUF (%s)", llm.chat_format)
        self._llm = llm
        self.info = _model_info(llm, path, template, self.config)
        self._worker = threading.Thread(target=self._work, name="furoshiki-engine", daemon=True)
        self._worker.start()
        self._ready.set()
        log.info("model %s loaded in %.2fs: ctx %d, %d threads",
                 self.info.model_id, time.perf_counter() - t0, self.info.n_ctx, threads)
        return self.info

    def close(self) -> None:
        """Cancel everything, stop the worker and free the model explicitly."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel("server shutting down")
                job._emit("error", ModelLoading("the server is shutting down", code="shutting_down"))
        current = self._current
        if current is not None:
            current.cancel("server shutting down")
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=30)
        if self._llm is not None:
            # Freeing here, not in __del__ at interpreter exit, avoids
            # llama-cpp-python's "NoneType is not callable" noise on shutdown.
            self._llm.close()
            self._llm = None
        self._ready.clear()

    # ---- queue -----------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._current is not None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, job: Job) -> Job:
        self._require_ready()
        if self.config.embeddings and job.kind != "embed":
            raise NotSupported("this server was started with --embeddings and only serves /v1/embeddings")
        if job.kind == "embed" and not self.config.embeddings:
            raise NotSupported(
                "the loaded model is not serving embeddings; start the server with --embeddings "
                "(ideally on an embedding model) to use /v1/embeddings")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            retry = max(1, round(self._avg_job_seconds * (self._queue.qsize() + 1)))
            raise ServerBusy(f"all {self.config.max_queue} queue places are taken; retry later",
                             retry_after=min(retry, 60)) from None
        return job

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.should_stop():
                job.stats.finish = "cancelled"
                job._emit("done", job.stats)
                continue
            self._current = job
            try:
                self._run(job)
            finally:
                self._current = None
                self.last_stats = job.stats
                self.jobs_done += 1

    def _run(self, job: Job) -> None:
        llm = self._llm
        assert llm is not None
        stats = job.stats
        stats.queued_ms = (time.perf_counter() - job.submitted) * 1000
        hook = TokenHook(should_stop=job.should_stop)
        llm.token_hook = hook
        t0 = time.perf_counter()
        params = {**job.params, "model": self.info.model_id}
        try:
            if job.kind == "chat":
                out = llm.create_chat_completion(**params, stream=job.stream)
            elif job.kind == "completion":
                out = llm.create_completion(**params, stream=job.stream)
            elif job.kind == "embed":
                out = _pooled(llm.create_embedding(**params))
            else:
                raise AssertionError(f"unknown job kind {job.kind}")
            if job.stream:
                finish = None
                for chunk in out:
                    finish = _finish_reason(chunk) or finish
                    job._emit("chunk", chunk)
            else:
                finish = _finish_reason(out)
                job._emit("result", out)
            stats.finish = finish or "stop"
        except GenerationCancelled:
            stats.finish = "cancelled"
            log.info("generation cancelled (%s) after %d tokens", job.cancel_reason, len(hook.sampled))
        except Exception as exc:  # noqa: BLE001 - every failure must reach the client as JSON
            stats.finish = "error"
            job._emit("error", _as_api_error(exc))
            return
        finally:
            llm.token_hook = None
            self._record(stats, hook, llm)
            self._avg_job_seconds = 0.8 * self._avg_job_seconds + 0.2 * (time.perf_counter() - t0)
        job._emit("done", stats)

    @staticmethod
    def _record(stats: JobStats, hook: TokenHook, llm: CancellableLlama) -> None:
        stats.prompt_tokens = hook.prompt_tokens
        stats.cached_tokens = max(0, hook.prompt_tokens - hook.prompt_evaluated)
        generated = [t for t in hook.sampled if not llm.is_end_of_generation(t)]
        stats.completion_tokens = len(generated)
        stats.prompt_ms = hook.prompt_seconds * 1000
        stats.predicted_ms = hook.generation_seconds * 1000
        stats.ttft_ms = None if hook.ttft_seconds is None else hook.ttft_seconds * 1000
        if stats.finish == "length":
            stats.stop_type = "limit"
        elif stats.finish == "stop":
            ended_on_eog = bool(hook.sampled) and llm.is_end_of_generation(hook.sampled[-1])
            stats.stop_type = "eos" if ended_on_eog else "word"
        else:
            stats.stop_type = "none"

    # ---- direct, read-only model access (no context needed) ----------------
    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = False) -> list[int]:
        llm = self._require_ready()
        return llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)

    def detokenize(self, tokens: list[int]) -> str:
        llm = self._require_ready()
        n_vocab = self.info.n_vocab
        bad = [t for t in tokens if not 0 <= t < n_vocab]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is outside the vocabulary (0..{n_vocab - 1})",
                                 param="tokens")
        return llm.detokenize(tokens).decode("utf-8", errors="replace")

    def grammar(self, gbnf: str | None = None, schema: dict | None = None, field: str = "grammar"):
        """A grammar that llama.cpp has parsed successfully, or InvalidRequest.

        llama-cpp-python hands grammar text to llama.cpp only when sampling
        starts, and a grammar llama.cpp cannot parse then crashes the whole
        process. So every grammar is parsed here first, at the door.
        """
        import llama_cpp
        from llama_cpp import LlamaGrammar

        llm = self._require_ready()
        try:
            if schema is not None:
                grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            else:
                grammar = LlamaGrammar.from_string(gbnf or "", verbose=False)
        except Exception as exc:  # noqa: BLE001 - the schema converter raises anything
            raise InvalidRequest(f"'{field}' could not be turned into a grammar: {exc}", param=field) from None
        sampler = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
        if not sampler:
            raise InvalidRequest(f"'{field}' is not a grammar llama.cpp can parse (see the GBNF guide)",
                                 param=field)
        llama_cpp.llama_sampler_free(sampler)
        return grammar

    def token_piece(self, token: int) -> str:
        llm = self._require_ready()
        return llm.detokenize([token]).decode("utf-8", errors="replace")

    def model_info(self) -> ModelInfo:
        self._require_ready()
        assert self.info is not None
        return self.info

    def _require_ready(self) -> CancellableLlama:
        if self._closed:
            raise ModelLoading("the server is shutting down", code="shutting_down")
        if not self._ready.is_set() or self._llm is None:
            raise ModelLoading("the model is still loading; retry in a moment")
        return self._llm


def _pooled(result: dict) -> dict:
    """One vector per input, as OpenAI clients expect.

    A GGUF without a pooling type (any chat model) makes llama.cpp return one
    vector per token; average those and L2-normalise, as pooled models do.
    """
    import numpy as np

    for item in result["data"]:
        vectors = item["embedding"]
        if vectors and isinstance(vectors[0], list):
            mean = np.asarray(vectors, dtype=np.float64).mean(axis=0)
            norm = np.linalg.norm(mean)
            item["embedding"] = (mean / norm if norm > 0 else mean).tolist()
    return result


def _finish_reason(obj: dict) -> str | None:
    choices = obj.get("choices") or []
    return choices[0].get("finish_reason") if choices else None


def _as_api_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    message = str(exc)
    if isinstance(exc, ValueError) and "exceed context window" in message:
        return PromptTooLong(f"{message}; shorten the conversation or start with a larger --ctx-size")
    if isinstance(exc, jinja2.TemplateError):
        return InvalidRequest(f"the model's chat template rejected these messages: {message}",
                              param="messages")
    if isinstance(exc, (ValueError, KeyError, TypeError)):
        return InvalidRequest(message or exc.__class__.__name__)
    log.exception("generation failed")
    return APIError(f"generation failed: {exc.__class__.__name__}: {message}")


def _model_info(llm: CancellableLlama, path: str, template: str | None, config: EngineConfig) -> ModelInfo:
    import llama_cpp

    name = llm.metadata.get("general.name") or os.path.splitext(os.path.basename(path))[0]
    return ModelInfo(
        model_id=name,
        path=path,
        n_ctx=llm.n_ctx(),
        n_ctx_train=llm._model.n_ctx_train(),
        n_vocab=llm.n_vocab(),
        n_params=llm._model.n_params(),
        size_bytes=config.model_length or os.path.getsize(path),
        chat_template=template,
        chat_format=llm.chat_format or "",
        embeddings=config.embeddings,
        system_info=llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
        llama_cpp_python=llama_cpp.__version__,
    )


def default_threads() -> int:
    """Physical cores: hyperthreads slow llama.cpp's matrix work down, not up."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:  # pragma: no cover - psutil is a declared dependency
        physical = None
    return max(1, physical or os.cpu_count() or 1)
