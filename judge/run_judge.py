"""Runs the judge CLI `python -m judge.evaluate` on one candidate in a process group of its own, killed at a timeout,
and reads back its result file (nonce-checked, so that the candidate cannot forge it)."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from judge.processes import end_group, spawn_group
from judge.spec import JudgeConfig

OUTPUT_TAIL_BYTES = 4000          # judge subprocess output kept as the reason of a crash
READ_CHUNK_BYTES = 65536
RESULT_KEYS = ("status", "reason", "val_bpb", "val_loss", "nats", "bytes", "tokens", "params", "causal", "seconds")


def empty_result(status: str = "crash", reason: str = "") -> dict:
    """The judge's result with every key present (what judge.evaluate writes and run_judge returns)."""
    result = dict.fromkeys(RESULT_KEYS)
    result.update(status=status, reason=reason, causal=False, probe="", sandboxed=False)
    return result


def run_judge(train_py, weights, data_dir, cfg: JudgeConfig, device: str = "cpu", env=None,
              timeout: float | None = None, threads: int = 0) -> dict:
    """Run the judge CLI in its own process group; kill the group at `timeout` (default cfg.timeout_seconds).

    Returns the result dict; status timeout when killed, crash (with the output tail) when no valid result came."""
    limit = cfg.timeout_seconds if timeout is None else timeout
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="popsearch-judge-run-") as tmp:
        out = Path(tmp) / "result.json"
        nonce = secrets.token_hex(16)
        cmd = [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", "judge.evaluate",
               "--train-py", str(Path(train_py).resolve()), "--weights", str(Path(weights).resolve()),
               "--data-dir", str(Path(data_dir).resolve()), "--seq-len", str(cfg.seq_len),
               "--eval-tokens", str(cfg.eval_tokens), "--eval-batch", str(cfg.eval_batch),
               "--probe-positions", str(cfg.probe_positions), "--device", device, "--out", str(out),
               "--threads", str(threads), "--nonce-stdin"]
        code, tail = _run_group(cmd, tmp, _child_env(env), nonce, limit)
        result = _read_result(out, nonce, code, tail)
    if code is None:
        result = empty_result("timeout", f"judge did not finish within {limit:g} s (process group killed)")
    if result.get("seconds") is None:
        result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def _child_env(env) -> dict:
    """env (or ours) with this judge package first on PYTHONPATH, and torch.compile kept in-process."""
    child = dict(os.environ if env is None else env)
    root = str(Path(__file__).resolve().parents[1])
    child["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [child.get("PYTHONPATH")])])
    child.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    return child


def _run_group(cmd, cwd, env, nonce: str, limit: float):
    """(exit code or None on timeout, tail of the output); the whole process group is killed at the end, and
    it dies with this thread (judge/processes.py)."""
    proc = spawn_group(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    tail = bytearray()
    reader = threading.Thread(target=_keep_tail, args=(proc.stdout, tail), daemon=True)
    reader.start()
    with contextlib.suppress(OSError):
        proc.stdin.write((nonce + "\n").encode())
        proc.stdin.close()
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        code = None
    end_group(proc)
    reader.join(timeout=5.0)
    return code, tail.decode(errors="replace").strip()


def _keep_tail(stream, tail: bytearray) -> None:
    for chunk in iter(lambda: stream.read1(READ_CHUNK_BYTES), b""):
        tail += chunk
        del tail[:-OUTPUT_TAIL_BYTES]


def _read_result(out: Path, nonce: str, code, tail: str) -> dict:
    last = tail[-OUTPUT_TAIL_BYTES:]
    if not out.exists():
        return empty_result("crash", f"judge process exited with code {code} without a result: {last}")
    try:
        result = json.loads(out.read_text())
    except (ValueError, OSError):
        result = None
    if not isinstance(result, dict) or result.get("status") not in ("ok", "invalid", "crash", "infra"):
        return empty_result("crash", f"judge result {out.name} is not valid JSON of a result: {last}")
    if result.pop("nonce", None) != nonce:
        return empty_result("invalid", "the result file was not written by the judge (nonce mismatch): "
                                       "the candidate forged it")
    return {**empty_result(), **result}
