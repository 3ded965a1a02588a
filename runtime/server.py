"""Serve the WSGI app with waitress, in a thread that can be stopped cleanly."""

from __future__ import annotations

import errno
import logging
import threading
from typing import Any

from waitress.server import create_server

from runtime.config import ServerConfig
from runtime.errors import ConfigError

# Streaming requests hold a waitress thread for as long as they wait and
# generate, so the pool must exceed the engine queue or the 503 would never come.
EXTRA_THREADS = 4


class ServerThread:
    def __init__(self, app: Any, config: ServerConfig, max_queue: int):
        try:
            self.server = create_server(
                app, host=config.host, port=config.port,
                threads=max_queue + 1 + EXTRA_THREADS,
                # >0 keeps reading the socket while a request runs, which is how
                # waitress notices a vanished client (waitress.client_disconnected).
                channel_request_lookahead=1,
                max_request_body_size=config.max_body_bytes + 64 * 1024,
                clear_untrusted_proxy_headers=True,
                ident="furoshiki",
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {config.port} on {config.host} is already in use; "
                                  "pick another with --port") from None
            raise ConfigError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
        self.port = self.server.effective_port
        self._thread = threading.Thread(target=self._run, name="furoshiki-http", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run()
        except OSError:  # the map is torn down under run() by stop()
            pass

    def start(self) -> ServerThread:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        logging.getLogger("waitress").setLevel(logging.CRITICAL)
        server = self.server
        for dispatcher in list(server._map.values()):
            dispatcher.handle_close()
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)
        self._thread.join(timeout)
