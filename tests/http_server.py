"""A FHIR endpoint on loopback for the tests that post bundles (writers and gateway delivery)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class FhirServer:
    """A loopback HTTP server answering each POST with the next status of ``statuses`` (the last repeats).

    It records each request's body and headers; ``close`` stops it (the tests use that to make it unreachable).
    """

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                server.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                server.headers.append(dict(self.headers))
                status = server.statuses[min(len(server.bodies), len(server.statuses)) - 1]
                body = json.dumps({"resourceType": "Bundle", "type": "transaction-response"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Silent."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def content_types(self) -> list[str]:
        return [headers["Content-Type"] for headers in self.headers]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def fhir_server() -> Iterator[type[FhirServer]]:
    """A FhirServer factory: ``fhir_server([503, 200])`` starts one; every one started is closed at the end."""
    started: list[FhirServer] = []

    class Started(FhirServer):
        def __init__(self, statuses: list[int]) -> None:
            super().__init__(statuses)
            started.append(self)

    yield Started
    for server in started:
        server.close()
