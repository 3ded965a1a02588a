"""A Hugging Face hub on 127.0.0.1 that speaks just enough of the real protocol for huggingface_hub.

It serves model info (`/api/models/...`) and file downloads (`/{repo}/resolve/...`
with HEAD, Range and the X-Repo-Commit / ETag headers), answers with the hub's
X-Error-Code for missing and gated repos, and can cut a download short once
to exercise resume. Every request is logged for the tests to inspect.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    cut_next_download_at: int | None = None   # send only this many bytes of the next full GET
    log: list[tuple[str, str, str | None]] = field(default_factory=list)   # (method, path, Range)

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _error(self, status: int, code: str) -> None:
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("Content-Type", "application/json")
                payload = json.dumps({"error": code}).encode()
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _serve(self, body: bool) -> None:
                path = unquote(self.path.split("?")[0])
                hub.log.append((self.command, path, self.headers.get("Range")))
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                    repo = self._repo(m.group(1))
                    if repo is None:
                        return
                    info = {"id": m.group(1), "sha": repo.sha, "siblings": [{"rfilename": f} for f in repo.files]}
                    data = json.dumps(info).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    repo = self._repo(m.group(1))
                    if repo is None:
                        return
                    data = repo.files.get(m.group(3))
                    if data is None:
                        return self._error(404, "EntryNotFound")
                    start = 0
                    if rng := self.headers.get("Range"):
                        start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                    self.send_response(206 if start else 200)
                    self.send_header("X-Repo-Commit", repo.sha)
                    self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                    self.send_header("Content-Length", str(len(data) - start))
                    if start:
                        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    self.end_headers()
                    if not body:
                        return
                    cut = hub.cut_next_download_at
                    if cut is not None and not start:
                        hub.cut_next_download_at = None
                        self.wfile.write(data[:cut])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    self.wfile.write(data[start:])
                    return
                self._error(404, "RepoNotFound")

            def _repo(self, repo_id: str) -> FakeRepo | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._error(404, "RepoNotFound")
                elif repo.gated:
                    self._error(403, "GatedRepo")
                    return None
                return repo

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
