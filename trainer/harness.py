"""The one timing helper a candidate train.py uses: budget, device, seed and the event stream.

Reads its settings from the POPSEARCH_* env (trainer/spec.py); standalone it trains 10 s on cuda-or-cpu."""
from __future__ import annotations

import json
import os
import sys
import time

import torch

from judge.handoff import hand_off
from judge.spec import ENV_WEIGHTS
from trainer import spec
from trainer.flops import FLOPS_PER_PARAM_TOKEN, matrix_params

RUNNER_GONE_EXIT = 75          # exit code when the events pipe broke (the runner died)
DEFAULT_SECONDS = 10.0        # standalone budget (no runner)
EMIT_INTERVAL = 0.5           # seconds between progress events (and loss.item() calls)


class Trial:
    """Budget bookkeeping for one training run.

    Attributes: device ("cuda" | "cpu"), seed, budget_kind ("time" | "flops"), budget_seconds,
    budget_flops, n_params (all parameters of the model given to start), flops_per_token (given to start,
    by trainer/flops.py's formula; else 6 x its matrix parameters), steps, tokens (running totals)."""

    def __init__(self) -> None:
        env = os.environ
        self.budget_kind = env.get(spec.ENV_BUDGET_KIND, "time")
        if self.budget_kind not in ("time", "flops"):
            raise ValueError(f"{spec.ENV_BUDGET_KIND}={self.budget_kind!r}: expected 'time' or 'flops'")
        self.budget_seconds = float(env.get(spec.ENV_BUDGET_SECONDS, DEFAULT_SECONDS))
        self.budget_flops = float(env.get(spec.ENV_BUDGET_FLOPS, 0.0))
        if self.budget_kind == "flops" and self.budget_flops <= 0:
            raise ValueError(f"{spec.ENV_BUDGET_FLOPS} must be > 0 in flops mode")
        self.device = env.get(spec.ENV_DEVICE) or ("cuda" if torch.cuda.is_available() else "cpu")
        self.seed = int(env.get(spec.ENV_SEED, 0))
        if self.device == "cpu" and env.get(spec.ENV_THREADS):
            torch.set_num_threads(int(env[spec.ENV_THREADS]))
        fd = env.get(spec.ENV_EVENTS_FD)
        self._events_fd = int(fd) if fd else None
        go = env.get(spec.ENV_GO_FD)
        self._go_fd = int(go) if go else None
        self._model: torch.nn.Module | None = None
        self.n_params = 0
        self.flops_per_token = 0.0
        self.steps = 0
        self.tokens = 0
        self._t0: float | None = None
        self._last_emit = -float("inf")
        self._last_step_at: float | None = None
        self._step_seconds = 0.0             # duration of the latest step, runner-independent (perf_counter)

    @property
    def device_type(self) -> str:
        """"cuda" or "cpu" (for torch.autocast's device_type)."""
        return torch.device(self.device).type

    def start(self, model: torch.nn.Module | None = None, flops_per_token: float | None = None) -> None:
        """Count params, wait for the runner's go byte (if any), start the clock, emit 'start'.

        flops_per_token: the model's training FLOPs per token by trainer.flops.flops_per_token (MFU, flops mode)."""
        if model is not None:
            self.n_params = sum(p.numel() for p in model.parameters())
            self.flops_per_token = float(flops_per_token or FLOPS_PER_PARAM_TOKEN * matrix_params(model))
            self._model = model
        if self.budget_kind == "flops" and not self.flops_per_token:
            raise ValueError("flops mode: pass the model to trial.start(model) so its FLOPs can be counted")
        if self._go_fd is not None:
            self._emit({"event": "ready", "t": time.time()})
            os.read(self._go_fd, 1)   # a byte or EOF: either way the device is ours now
        if self.device_type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._t0 = time.perf_counter()
        self._emit({"event": "start", "t": time.time(), "params": self.n_params})

    def elapsed(self) -> float:
        """Training seconds since start()."""
        if self._t0 is None:
            raise RuntimeError("trial.start(model) was not called before training")
        return time.perf_counter() - self._t0

    def progress(self) -> float:
        """Fraction of the budget used so far (may exceed 1 slightly)."""
        if self.budget_kind == "flops":
            return self.flops_per_token * self.tokens / self.budget_flops
        return self.elapsed() / self.budget_seconds

    def step(self, tokens: int, loss=None) -> float:
        """Record one optimizer step of `tokens` tokens; returns progress. Emits at most ~2 events/s."""
        self.steps += 1
        self.tokens += int(tokens)
        p = self.progress()
        now = time.perf_counter()
        self._step_seconds = now - (self._last_step_at if self._last_step_at is not None else self._t0 or now)
        self._last_step_at = now
        if now - self._last_emit >= EMIT_INTERVAL or p >= 1.0 or self.done():
            self._last_emit = now
            value = float(loss.item() if torch.is_tensor(loss) else loss) if loss is not None else None
            self._emit({"event": "progress", "progress": p, "loss": value,
                        "step": self.steps, "tokens": self.tokens})
        return p

    def done(self) -> bool:
        """The budget is used up. Time mode: also when one more step as long as the latest would end past
        the budget, so a run of long steps stops inside its budget instead of overrunning it by a step."""
        if self.budget_kind == "time" and self._t0 is not None:
            return self.elapsed() + self._step_seconds >= self.budget_seconds
        return self.progress() >= 1.0

    def finish(self, **stats) -> dict:
        """Hand the model of start(model) over to the judge, then emit 'finish' with steps, tokens, peak VRAM,
        backend and any extra stats; returns the event. The runner freezes the weights at this event, so
        training on after it changes nothing that is judged."""
        peak = 0.0
        if self.device_type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
        seconds = self.elapsed()
        if self._model is not None and os.environ.get(ENV_WEIGHTS):
            hand_off(self._model)
        event = {"event": "finish", "steps": self.steps, "tokens": self.tokens,
                 "peak_vram_mb": peak, "backend": stats.pop("backend", ""),
                 "flops_per_token": self.flops_per_token or None,
                 "train_seconds": seconds, **stats}
        self._emit(event)
        return event

    def _emit(self, event: dict) -> None:
        if self._events_fd is None:
            return
        try:
            os.write(self._events_fd, (json.dumps(event) + "\n").encode())
        except BrokenPipeError:       # the runner (and its actor) went away: nobody will judge this run,
            sys.stderr.write("popsearch: the runner is gone; stopping this trial\n")
            os._exit(RUNNER_GONE_EXIT)  # so stop burning the device now
