"""The endpoint proposer: ask an OpenAI-compatible chat-completions endpoint for a new train.py.

Standard library HTTP (urllib) with a timeout, retries with back-off and a reason for every rejected answer;
the answer is SEARCH/REPLACE blocks or a whole file; tokens and cost come from the response's usage."""
from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request

from orchestrator.proposers.agent import AgentOutcome
from orchestrator.proposers.base import clean_message, validate_source

ANSWER_FORMAT = """Answer in this format and nothing else:
1. One line: the idea and why it should lower val_bpb (it becomes the commit message).
2. Either SEARCH/REPLACE blocks, each exactly
<<<<<<< SEARCH
(lines copied exactly from the current train.py)
=======
(their replacement)
>>>>>>> REPLACE
   or the whole new train.py in one ```python fenced block."""
BLOCK = re.compile(r"^<{7} SEARCH\n(.*?)^={7}\n(.*?)^>{7} REPLACE$", re.S | re.M)
FENCE = re.compile(r"^```(?:python|py)?\n(.*?)^```", re.S | re.M)
RETRY_STATUSES = (408, 409, 429, 500, 502, 503, 504)
LOG_CHARS = 4000                         # of the last answer or error kept with the proposal


class EndpointError(Exception):
    """A request that failed; retryable says whether another attempt may succeed."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def messages(program_md: str, history_text: str, source: str) -> list[dict]:
    """The chat: the brief as the system message, then the history, train.py and the answer format."""
    user = (f"{history_text.rstrip()}\n\n# The current train.py of this member\n\n```python\n{source.rstrip()}\n```\n\n"
            f"Propose one clear change to train.py.\n\n{ANSWER_FORMAT}\n")
    return [{"role": "system", "content": program_md}, {"role": "user", "content": user}]


def request_body(cfg: dict, chat: list[dict]) -> bytes:
    return json.dumps({"model": cfg["model"], "messages": chat, "max_tokens": cfg["max_tokens"],
                       "temperature": cfg["temperature"]}).encode()


def post(cfg: dict, body: bytes, env=None) -> dict:
    """One POST to {base_url}/chat/completions; the decoded JSON, or EndpointError."""
    env = os.environ if env is None else env
    headers = {"Content-Type": "application/json"}
    if cfg.get("api_key_env"):
        key = env.get(cfg["api_key_env"], "")
        if not key:
            raise EndpointError(f"environment variable {cfg['api_key_env']} (proposers.endpoint.api_key_env) "
                                "is not set", retryable=False)
        headers["Authorization"] = f"Bearer {key}"
    url = cfg["base_url"].rstrip("/") + "/chat/completions"
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=cfg["timeout"]) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace")
        raise EndpointError(f"HTTP {exc.code} from {url}: {detail}", exc.code in RETRY_STATUSES) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EndpointError(f"no answer from {url}: {reason}", retryable=True) from None
    try:
        return json.loads(raw)
    except ValueError:
        raise EndpointError(f"{url} answered with something that is not JSON: {raw[:200]!r}", retryable=True) from None


def post_with_retries(cfg: dict, body: bytes, sleep=time.sleep, env=None) -> tuple[dict | None, str, int]:
    """(response, '' or the last error, attempts): 1 + retries attempts, back-off doubling between them."""
    error, wait = "", cfg["backoff"]
    for attempt in range(1, cfg["retries"] + 2):
        try:
            return post(cfg, body, env), "", attempt
        except EndpointError as exc:
            error = str(exc)
            if not exc.retryable or attempt > cfg["retries"]:
                return None, error, attempt
        sleep(wait)
        wait *= 2
    return None, error, cfg["retries"] + 1


def usage_of(cfg: dict, response: dict) -> dict:
    """Ledger columns llm_prompt_tokens, llm_completion_tokens, llm_cost from usage and the price table."""
    usage = response.get("usage") or {}
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    price = cfg.get("prices", {}).get(cfg["model"], {})
    cost = (prompt * price.get("prompt", 0.0) + completion * price.get("completion", 0.0)) / 1e6
    return {"llm_prompt_tokens": prompt, "llm_completion_tokens": completion, "llm_cost": round(cost, 8)}


def answer_text(response: dict) -> tuple[str | None, str]:
    """(the first choice's content, '') or (None, why the response has none)."""
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None, f"the response has no choices[0].message.content (keys: {', '.join(sorted(response))})"
    if not isinstance(content, str) or not content.strip():
        return None, "the answer is empty"
    return content, ""


def apply_blocks(source: str, blocks: list[tuple[str, str]]) -> tuple[str | None, str]:
    """Apply SEARCH/REPLACE blocks in order; each SEARCH must occur exactly once."""
    for n, (search, replace) in enumerate(blocks, start=1):
        count = source.count(search)
        if count != 1:
            where = "does not occur" if count == 0 else f"occurs {count} times"
            return None, f"SEARCH block {n} of {len(blocks)} {where} in train.py: {search.strip()[:120]!r}"
        source = source.replace(search, replace, 1)
    return source, ""


def parse_answer(parent: str, answer: str) -> tuple[str | None, str, str]:
    """(new source, message, '') from an answer, or (None, '', reason) for a malformed one."""
    first = next((line.strip() for line in answer.splitlines() if line.strip()), "")
    idea = "" if first.startswith(("<<<", "```")) else re.sub(r"^1\.\s*", "", first)
    message = clean_message(idea, "endpoint edit")
    blocks = [(s, r) for s, r in BLOCK.findall(answer)]
    if blocks:
        source, reason = apply_blocks(parent, blocks)
    else:
        fences = FENCE.findall(answer)
        if not fences:
            return None, "", "the answer has neither SEARCH/REPLACE blocks nor a ```python block"
        source, reason = max(fences, key=len), ""
    if source is None:
        return None, "", reason
    if source == parent:
        return None, "", "the answer leaves train.py unchanged"
    ok, why = validate_source(source)
    return (source, message, "") if ok else (None, "", why)


def run_endpoint(cfg: dict, program_md: str, history_text: str, source: str, sleep=time.sleep,
                 env=None) -> AgentOutcome:
    """One proposal from the endpoint (what one endpoint Ray task does): status ok with the new source, else
    failed (no answer after the retries) or rejected (malformed answer), always with usage and seconds."""
    started = time.monotonic()
    response, error, attempts = post_with_retries(cfg, request_body(cfg, messages(program_md, history_text, source)),
                                                  sleep, env)
    if response is None:
        outcome = AgentOutcome("failed", reason=f"endpoint: {error} (after {attempts} attempt(s))", log_tail=error)
        usage = {}
    else:
        usage = usage_of(cfg, response)
        answer, why = answer_text(response)
        new, message, why = parse_answer(source, answer) if answer is not None else (None, "", why)
        outcome = (AgentOutcome("ok", source=new, message=message) if new is not None
                   else AgentOutcome("rejected", reason=f"endpoint answer rejected: {why}"))
        outcome.log_tail = (answer or "")[-LOG_CHARS:]
    outcome.seconds = time.monotonic() - started
    outcome.usage = {"agent_seconds": round(outcome.seconds, 3), **usage}
    return outcome
