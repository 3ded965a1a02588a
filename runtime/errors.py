"""Exceptions raised by the runtime library.

`APIError` subclasses carry the HTTP status and OpenAI error type/code, so
the HTTP layer turns any of them into `{"error": {...}}` without knowing
which one it is. Only the CLI turns `FuroshikiError` into a one-line message.
"""

from __future__ import annotations


class FuroshikiError(Exception):
    """Base class for every error furoshiki raises on purpose."""


class ConfigError(FuroshikiError):
    """A flag or setting that cannot work, e.g. a public bind without a key."""


class ModelLoadError(FuroshikiError):
    """llama.cpp could not load the model file."""


class APIError(FuroshikiError):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code,
                          "param": self.param}}


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class PromptTooLong(InvalidRequest):
    code = "context_length_exceeded"


class NotSupported(InvalidRequest):
    code = "not_supported"


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(APIError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class UnsupportedMediaType(InvalidRequest):
    status = 415
    code = "unsupported_media_type"


class ServerBusy(APIError):
    """The request queue is full; the client should retry after a pause."""

    status = 503
    type = "server_error"
    code = "queue_full"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ModelLoading(APIError):
    status = 503
    type = "server_error"
    code = "model_loading"


class GenerationCancelled(FuroshikiError):
    """Raised inside the generation loop when the client went away or asked to stop."""
