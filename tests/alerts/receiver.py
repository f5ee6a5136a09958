"""A webhook receiver for tests: an HTTP server on 127.0.0.1 in a thread of the test process.

It keeps every request and answers each with the next status of ``answers`` (200 once they
run out), so a test can make it fail a few times and then recover.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self, answers: list[int] | None = None) -> None:
        self.requests: list[Request] = []
        self.answers = list(answers or [])
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  # the http.server API
                length = int(self.headers.get("Content-Length", 0))
                request = Request(self.path, dict(self.headers.items()), self.rfile.read(length))
                with receiver._lock:
                    receiver.requests.append(request)
                    status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"busy, try later")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet test output

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/hooks/batch"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def answer(self, *statuses: int) -> None:
        with self._lock:
            self.answers.extend(statuses)
