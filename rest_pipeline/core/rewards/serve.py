"""Serve any of our reward models over the protocol of core/rewards/http.py, on 127.0.0.1 by default:
the reference server a team can copy to put its own model behind `reward.model: http`.

One model, one lock (scorers need not be thread-safe); requests are checked before scoring (an object
with equal-length lists of strings, references where the model needs them, a size limit) and refused
with 400 and a message; GET /stats counts what was scored, so a client can see nothing was scored twice.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from rest_pipeline.core.rewards.base import RewardModel

MAX_BODY = 64 << 20  # bytes of one POST /score


class RewardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, model: RewardModel, host: str = "127.0.0.1", port: int = 8700, log: Callable = print):
        self.model, self.log, self.lock = model, log, threading.Lock()
        self.stats = {"requests": 0, "inputs": 0}
        super().__init__((host, port), _Handler)

    def info(self) -> dict:
        m = self.model
        return {
            "name": m.name,
            "version": m.version,
            "needs_reference": bool(m.needs_reference),
            "normalisation": getattr(m, "normalisation", ""),
            "protocol": "rest-reward/1",
        }


class _Handler(BaseHTTPRequestHandler):
    server: RewardServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass  # one line per batch would drown the log; /stats counts them

    def _send(self, code: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/info":
            return self._send(200, self.server.info())
        if self.path == "/stats":
            return self._send(200, dict(self.server.stats))
        self._send(404, {"error": f"no {self.path}; GET /info, GET /stats, POST /score"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/score":
            return self._send(404, {"error": f"no {self.path}; POST /score"})
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._send(413, {"error": f"body of {length} bytes; at most {MAX_BODY}"})
        try:
            request = json.loads(self.rfile.read(length))
            sources, hypotheses, references = _checked(request, self.server.model.needs_reference)
        except (ValueError, UnicodeDecodeError) as e:
            return self._send(400, {"error": str(e)})
        with self.server.lock:
            scores = self.server.model.score(sources, hypotheses, references)
            self.server.stats["requests"] += 1
            self.server.stats["inputs"] += len(sources)
        values = [float(s) for s in scores]
        if not all(math.isfinite(v) for v in values):
            return self._send(500, {"error": f"the model '{self.server.model.name}' returned a non-finite score"})
        self._send(200, {"scores": values})


def _checked(request: object, needs_reference: bool) -> tuple[list[str], list[str], list[str] | None]:
    if not isinstance(request, dict):
        raise ValueError("expected a JSON object {sources, hypotheses, references}")
    fields = {}
    for key in ("sources", "hypotheses", "references"):
        value = request.get(key)
        if value is None and key == "references" and not needs_reference:
            fields[key] = None
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"'{key}' must be a list of strings")
        fields[key] = value
    n = len(fields["sources"])
    if len(fields["hypotheses"]) != n or (fields["references"] is not None and len(fields["references"]) != n):
        raise ValueError("'sources', 'hypotheses' and 'references' must have the same length")
    return fields["sources"], fields["hypotheses"], fields["references"]
