"""A quiet http.server handler that answers JSON: the stand-ins tests put in place of an identity provider's
discovery document or JWKS subclass it and call `send_json` from `do_GET`."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler


class JsonHandler(BaseHTTPRequestHandler):
    def send_json(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # nothing on the test's output
        pass
