"""The endpoint proposer against a real HTTP server on loopback (http.server in a thread): good answers as
SEARCH/REPLACE blocks and as a whole file, malformed, slow, flaky and failing ones, and the key header.

The server counts requests per path; back-off sleeps are recorded, not slept."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.config import EndpointConfig
from orchestrator.proposers import endpoint
from trainer.constants import apply_overrides, read_constants

USAGE = {"prompt_tokens": 12000, "completion_tokens": 300}


def chat(content: str) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": content}}], "usage": USAGE}


class Handler(BaseHTTPRequestHandler):
    answers: dict = {}                   # first path part -> function(request json, count) -> (code, body, delay)
    counts: dict = {}
    seen: list = []

    def do_POST(self):
        kind = self.path.strip("/").split("/")[0]
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = self.counts[kind] = self.counts.get(kind, 0) + 1
        self.seen.append((kind, self.path, dict(self.headers), request))
        code, body, delay = self.answers[kind](request, n)
        time.sleep(delay)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass                          # the client gave up (the slow case)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(baseline_source):
    good = "Halve the depth: more steps in the same budget.\n<<<<<<< SEARCH\nDEPTH = 8\n=======\nDEPTH = 4\n>>>>>>> REPLACE\n"
    good = good.replace("DEPTH = 8", next(l for l in baseline_source.splitlines() if l.startswith("DEPTH")))
    whole = apply_overrides(baseline_source, {"MATRIX_LR": 0.05})
    Handler.answers = {
        "good": lambda req, n: (200, chat(good), 0),
        "whole": lambda req, n: (200, chat(f"1. A higher matrix lr.\n```python\n{whole}```\n"), 0),
        "malformed": lambda req, n: (200, chat("I would make the model deeper."), 0),
        "missing": lambda req, n: (200, chat("x\n<<<<<<< SEARCH\nNOT_THERE = 1\n=======\nX = 2\n>>>>>>> REPLACE\n"), 0),
        "broken": lambda req, n: (200, chat("x\n```python\ndef build_model(:\n```\n"), 0),
        "nochoices": lambda req, n: (200, {"error": "overloaded"}, 0),
        "slow": lambda req, n: (200, chat(good), 2.0),
        "flaky": lambda req, n: ((503, {"error": "busy"}, 0) if n < 3 else (200, chat(good), 0)),
        "fail": lambda req, n: (500, {"error": "boom"}, 0),
        "denied": lambda req, n: (401, {"error": "bad key"}, 0),
        "notjson": lambda req, n: (200, b"<html>proxy error</html>", 0),
    }
    Handler.counts, Handler.seen = {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def config(base: str, kind: str, **over) -> dict:
    from dataclasses import asdict
    cfg = asdict(EndpointConfig(base_url=f"{base}/{kind}/v1", model="coder", timeout=5.0, retries=2, backoff=0.5,
                                prices={"coder": {"prompt": 1.0, "completion": 4.0}}))
    return {**cfg, **over}


def propose(base, kind, source, **over):
    sleeps = []
    out = endpoint.run_endpoint(config(base, kind, **over), "# brief\n", "# history\n", source, sleep=sleeps.append,
                                env={"CODER_KEY": "sekret"})
    return out, sleeps


def test_search_replace_answer_is_applied_with_its_usage_and_cost(server, baseline_source):
    out, sleeps = propose(server, "good", baseline_source, api_key_env="CODER_KEY")
    assert out.status == "ok", out.reason
    assert read_constants(out.source)["DEPTH"] == 4 and out.message == "Halve the depth: more steps in the same budget."
    assert out.usage["llm_prompt_tokens"] == 12000 and out.usage["llm_completion_tokens"] == 300
    assert out.usage["llm_cost"] == pytest.approx((12000 * 1.0 + 300 * 4.0) / 1e6) and sleeps == []
    kind, path, headers, request = Handler.seen[-1]
    assert path == "/good/v1/chat/completions" and headers["Authorization"] == "Bearer sekret"
    assert request["model"] == "coder" and request["messages"][0] == {"role": "system", "content": "# brief\n"}
    assert "# history" in request["messages"][1]["content"] and "def build_model" in request["messages"][1]["content"]


def test_whole_file_answer(server, baseline_source):
    out, _ = propose(server, "whole", baseline_source)
    assert out.status == "ok" and read_constants(out.source)["MATRIX_LR"] == 0.05
    assert out.message == "A higher matrix lr."


@pytest.mark.parametrize("kind,words", [
    ("malformed", "neither SEARCH/REPLACE blocks nor a ```python block"),
    ("missing", "SEARCH block 1 of 1 does not occur in train.py"),
    ("broken", "syntax error"),
    ("nochoices", "no choices[0].message.content"),
])
def test_malformed_answers_are_rejected_with_the_reason(server, baseline_source, kind, words):
    out, sleeps = propose(server, kind, baseline_source)
    assert out.status == "rejected" and words in out.reason and out.source is None
    assert Handler.counts[kind] == 1 and sleeps == []
    assert out.usage["llm_prompt_tokens"] == (0 if kind == "nochoices" else 12000)     # tokens billed are recorded


def test_flaky_endpoint_is_retried_with_back_off(server, baseline_source):
    out, sleeps = propose(server, "flaky", baseline_source)
    assert out.status == "ok" and Handler.counts["flaky"] == 3 and sleeps == [0.5, 1.0]


@pytest.mark.parametrize("kind,attempts,words", [("fail", 3, "HTTP 500"), ("denied", 1, "HTTP 401"),
                                                 ("notjson", 3, "not JSON")])
def test_failing_endpoint_gives_up_with_the_reason(server, baseline_source, kind, attempts, words):
    out, sleeps = propose(server, kind, baseline_source)
    assert out.status == "failed" and words in out.reason and f"after {attempts} attempt(s)" in out.reason
    assert Handler.counts[kind] == attempts and len(sleeps) == attempts - 1


def test_slow_endpoint_times_out_and_is_retried(server, baseline_source):
    started = time.monotonic()
    out, sleeps = propose(server, "slow", baseline_source, timeout=0.3, retries=1)
    assert out.status == "failed" and "timed out" in out.reason and Handler.counts["slow"] == 2
    assert sleeps == [0.5] and time.monotonic() - started < 1.9


def test_a_missing_key_variable_fails_without_a_request(server, baseline_source):
    out, _ = propose(server, "good", baseline_source, api_key_env="NOT_SET_ANYWHERE")
    assert out.status == "failed" and "NOT_SET_ANYWHERE" in out.reason and "good" not in Handler.counts
