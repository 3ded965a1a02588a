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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import llama_cpp

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


class CancellableLlama(llama_cpp.Llama):
    token_hook: TokenHook | None = None

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
