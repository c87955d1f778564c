"""A minimal stand-in for the model hub's HTTP API on loopback, serving one repo from a local folder.

It answers what ``huggingface_hub.snapshot_download`` asks (repo info, file tree, HEAD/GET of
``resolve`` URLs), so `vllm-mlx download` runs its real download path without network access.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "c0ffee" + "0" * 34


class FakeHub:
    def __init__(self, repo_id: str, folder: Path):
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_HEAD(self):
                self._answer(with_body=False)

            def do_GET(self):
                self._answer(with_body=True)

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, with_body: bool = True):
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def _answer(self, with_body: bool):
                path = self.path.split("?")[0]
                hub.requests.append(f"{self.command} {path}")
                api, resolve = f"/api/models/{repo_id}", f"/{repo_id}/resolve/"
                if path.startswith(api + "/tree/"):
                    tree = [{"type": "file", "path": n, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                            for n, d in files.items()]
                    return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"},
                                      with_body)
                if path.startswith(api + "/revision/"):
                    info = {"id": repo_id, "sha": COMMIT, "siblings": [{"rfilename": n} for n in files]}
                    return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"},
                                      with_body)
                if path.startswith(resolve) and path[len(resolve):].partition("/")[2] in files:
                    data = files[path[len(resolve):].partition("/")[2]]
                    return self._send(200, data, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                                  "X-Repo-Commit": COMMIT}, with_body)
                if path.startswith("/api/models/"):  # any other repo: what the hub says for unknown repos
                    return self._send(401, b"{}", {"X-Error-Code": "RepoNotFound"}, with_body)
                return self._send(404, with_body=with_body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
