"""The trial runner: one candidate train.py in a fresh scratch folder, bounded by the runner's own clock, then the judge.

Three phases so that start-up can overlap another trial's judging: launch() -> Running.go() -> supervise() -> judge_trial()."""
from __future__ import annotations

import json
import math
import os
import queue
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from judge.processes import TrialFamily, kill_group, kill_pid, new_token, spawn_group
from judge.spec import JudgeConfig
from trainer import flops
from trainer import spec as S
from trainer.spec import TrialResult, TrialSpec
from trainer import sandbox
from trainer.trial_env import base_env, trial_env, violations_path

TICK = 0.05                   # seconds between checks of the clock, events and the process
PUMP_READ = 65536             # bytes per read from a pipe
EVENT_LINE_MAX = 65536        # longer event lines are dropped
MAX_CURVE_POINTS = 4096       # loss curve is halved (every other point) beyond this
LOG_TAIL_BYTES = 4000         # tail of the log kept in the result and used as a crash reason
DRAIN_SECONDS = 2.0           # after the trial is gone, how long the pipes may take to reach EOF
EARLY_STOP_PATIENCE = 3       # consecutive progress reports above the parent's curve before stopping
TEXT_FIELD_MAX = 200          # reported strings (backend, device) are cut to this
VIOLATION_LINES = 10          # sandbox violations quoted in the reason


# ---------------------------------------------------------------- sandbox

def trial_command() -> list[str]:
    """`python -m trainer.sandbox train.py`: every trial runs inside the sandbox's bootstrap."""
    return [sys.executable, "-m", "trainer.sandbox", "train.py"]


def sandbox_verdict(code: int, scratch: Path, log_tail: str) -> tuple | None:
    """('invalid', violations) or ('infra', why) for the sandbox's own exit codes and records; None when the
    sandbox has nothing to say (the exit is the candidate's own, classified by the caller)."""
    if code == sandbox.SETUP_EXIT:
        return ("infra", f"the sandbox could not be set up (exit {code}); log tail:\n{_last_lines(log_tail)}")
    try:
        lines = violations_path(scratch).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    if code != sandbox.guard.VIOLATION_EXIT and not lines:
        return None          # a record with lines counts whatever the exit code (os._exit skips the final check)
    prefix = sandbox.guard.VIOLATION_PREFIX
    lines = lines or [line for line in log_tail.splitlines() if line.startswith(prefix)]
    shown = "\n".join(lines[:VIOLATION_LINES]) or "(no record)"
    return ("invalid", f"broke the sandbox's rules (exit {code}):\n{shown}")


# ---------------------------------------------------------------- pipes

class _Pump(threading.Thread):
    """Reads one pipe until EOF or stop(), handing each chunk to sink(bytes, monotonic, wall)."""

    def __init__(self, fd: int, sink, name: str):
        super().__init__(name=name, daemon=True)
        self.fd, self.sink, self._stop_flag = fd, sink, threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_flag.is_set():
                ready, _, _ = select.select([self.fd], [], [], TICK)
                if not ready:
                    continue
                data = os.read(self.fd, PUMP_READ)
                if not data:
                    break
                self.sink(data, time.monotonic(), time.time())
        finally:
            os.close(self.fd)

    def finish(self, seconds: float) -> None:
        """Wait up to `seconds` for EOF, then stop reading (a detached writer may hold the pipe open)."""
        self.join(seconds)
        self._stop_flag.set()
        self.join()


class _CappedLog:
    """Writes at most `cap` bytes to a file, counts what it drops and keeps the tail of everything."""

    def __init__(self, path: Path, cap: int):
        self.file = open(path, "wb")
        self.cap, self.written, self.dropped = cap, 0, 0
        self.tail: deque[bytes] = deque()
        self._tail_len = 0

    def __call__(self, data: bytes, mono: float, wall: float) -> None:
        room = max(0, self.cap - self.written)
        if room:
            self.file.write(data[:room])
            self.written += min(room, len(data))
        self.dropped += max(0, len(data) - room)
        self.tail.append(data[-LOG_TAIL_BYTES:])
        self._tail_len += len(self.tail[-1])
        while self._tail_len - len(self.tail[0]) >= LOG_TAIL_BYTES:
            self._tail_len -= len(self.tail.popleft())

    def close(self) -> None:
        if self.dropped:
            self.file.write(f"\n[popsearch runner: log capped at {self.cap} bytes; "
                            f"{self.dropped} more bytes dropped]\n".encode())
        self.file.close()

    def tail_text(self) -> str:
        return b"".join(self.tail)[-LOG_TAIL_BYTES:].decode("utf-8", "replace")


class _EventLines:
    """Splits the events pipe into JSON objects stamped with the runner's clocks, into a queue."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self._buf = b""
        self.junk = 0

    def __call__(self, data: bytes, mono: float, wall: float) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > EVENT_LINE_MAX:
            self._buf, self.junk = b"", self.junk + 1
        for line in lines:
            event = _parse_event(line)
            if event is None:
                self.junk += 1
            else:
                self.queue.put((mono, wall, event))


def _parse_event(line: bytes) -> dict | None:
    if not line.strip() or len(line) > EVENT_LINE_MAX:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


# ---------------------------------------------------------------- phases

@dataclass
class Partial:
    """What supervise() knows before the judge: a provisional result (status 'ok' = ready to judge)."""
    result: TrialResult
    scratch: Path
    weights: Path
    t_launch: float                      # runner's monotonic clock at launch
    killed_leftovers: list = field(default_factory=list)


class Running:
    """A launched trial process; go() lets it start training, supervise() bounds it and collects events."""

    def __init__(self, spec: TrialSpec, scratch: Path, on_event=None):
        self.spec, self.scratch, self.on_event = spec, scratch, on_event
        self.token = new_token()
        self.log = _CappedLog(scratch / "train.log", spec.log_cap_bytes)
        self.events = _EventLines()
        self.timeline: dict = {}
        self.t_launch = self.t_go = self.t_ready = self.t_start = self.t_finish = None
        self.finish_event: dict = {}
        self.curve: list = []
        self._above = 0
        self._stop_reason = ""
        self.snapshot = scratch.with_name(scratch.name + ".weights.pt")   # out of the candidate's reach
        self.weights_problem = ""       # set at the finish event by snapshot_weights ('' = frozen copy made)
        self._go_fd: int | None = None
        self._go_lock = threading.Lock()

    # -- launch
    def _spawn(self) -> None:
        log_r, log_w = os.pipe()
        ev_r, ev_w = os.pipe()
        child_fds = [ev_w]
        env = trial_env(self.spec, self.scratch, self.token)
        env[S.ENV_EVENTS_FD] = str(ev_w)
        go_r = None
        if self.spec.wait_for_go:
            go_r, self._go_fd = os.pipe()
            child_fds.append(go_r)
            env[S.ENV_GO_FD] = str(go_r)
        self.t_launch = time.monotonic()
        self.timeline["launch"] = time.time()
        try:
            self.proc = spawn_group(trial_command(), cwd=self.scratch, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log_w, stderr=subprocess.STDOUT, pass_fds=child_fds)
        except BaseException:
            for fd in (log_r, ev_r, self._go_fd):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            for fd in (log_w, ev_w, go_r):
                if fd is not None:
                    os.close(fd)
        try:
            self.family = TrialFamily(self.proc.pid, self.token)
            self._log_pump = _Pump(log_r, self.log, f"trial-log-{self.proc.pid}")
            self._event_pump = _Pump(ev_r, self.events, f"trial-events-{self.proc.pid}")
            self._log_pump.start()
            self._event_pump.start()
        except BaseException:
            kill_group(self.proc.pid)           # no supervision: the child must not live on, holding a device
            kill_pid(self.proc.pid)
            if self._go_fd is not None:
                os.close(self._go_fd)
                self._go_fd = None
            raise
        if not self.spec.wait_for_go:
            self.t_go = self.t_launch

    # -- go
    def go(self) -> None:
        """Let the trial start training (it blocks in trial.start() until then). Idempotent."""
        with self._go_lock:
            if self.t_go is not None:
                return
            self.t_go = time.monotonic()
            self.timeline["go"] = time.time()
            fd, self._go_fd = self._go_fd, None
        if fd is not None:
            try:
                os.write(fd, b"1")
            except OSError:
                pass          # the trial is gone already; supervise() reports it
            finally:
                os.close(fd)

    # -- supervise
    def supervise(self) -> Partial:
        """Bound the trial by the runner's clock, collect its events, kill what is left; a provisional result."""
        outcome = None
        while outcome is None:
            self._take_events(TICK)
            if self._stop_reason:
                outcome = ("stopped", self._stop_reason)
            elif self.proc.poll() is not None:
                break
            else:
                outcome = self._over_limit(time.monotonic())
                self.family.scan()
        if outcome is not None:
            kill_group(self.proc.pid)
            kill_pid(self.proc.pid)             # in case it left its own group
        code = self.proc.wait()
        t_end = time.monotonic()
        self.family.scan(force=True)
        killed = self.family.reap()
        self._close_pipes()
        self._take_events(0)
        if self._go_fd is not None:
            os.close(self._go_fd)
            self._go_fd = None
        self.timeline["exit"] = time.time()
        if outcome is None:
            outcome = self._classify(code)
        if self.t_start is not None and self.t_finish is None and outcome[0] in ("timeout", "stopped"):
            self.t_finish = t_end
        return Partial(self._result(*outcome), self.scratch, self.snapshot, self.t_launch, killed)

    def _close_pipes(self) -> None:
        self._event_pump.finish(DRAIN_SECONDS)
        self._log_pump.finish(DRAIN_SECONDS)
        self.log.close()

    def _take_events(self, timeout: float) -> None:
        try:
            item = self.events.queue.get(timeout=timeout) if timeout else self.events.queue.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(*item)
            try:
                item = self.events.queue.get_nowait()
            except queue.Empty:
                return

    def _handle(self, mono: float, wall: float, event: dict) -> None:
        kind = event["event"]
        if kind == "start" and self.t_start is None:
            self.t_start = mono
            self.timeline["start"] = wall
        elif kind == "finish" and self.t_start is not None and self.t_finish is None:
            self.t_finish = mono
            self.timeline["finish"] = wall
            self.finish_event = event
            self.weights_problem = snapshot_weights(self.scratch / "weights.pt", self.snapshot)
        elif kind == "ready" and self.t_ready is None:
            self.t_ready = mono
            self.timeline["ready"] = wall
        elif kind == "progress" and self.t_start is not None and self.t_finish is None:
            self._progress(event)
        if self.on_event is not None:
            try:
                self.on_event(dict(event, runner_seconds=mono - self.t_launch))
            except Exception as exc:  # a broken live display must not break the trial
                print(f"runner: on_event failed for trial {self.spec.trial_id}: {exc!r}", file=sys.stderr)

    def _progress(self, event: dict) -> None:
        p, raw = _number(event.get("progress")), event.get("loss")
        if p is None or raw is None:
            return                               # no loss reported: nothing to compare
        loss = _number(raw)                      # NaN, inf or garbage -> None, which counts as worse
        self.curve.append((p, loss))
        if len(self.curve) > MAX_CURVE_POINTS:
            self.curve = self.curve[::2]
        reason = early_stop_check(self.spec, p, loss)
        self._above = self._above + 1 if reason else 0
        if reason and self._above >= EARLY_STOP_PATIENCE:
            self._stop_reason = reason

    def _over_limit(self, now: float) -> tuple | None:
        """('timeout', reason) when a limit of the runner's clock is passed, else None."""
        spec = self.spec
        if self.t_go is None:
            return None                      # waiting for the device: the start-up clock has not begun
        if self.t_start is None and now - self.t_go > spec.startup_allowance:
            return ("timeout", f"no start event within the start-up allowance of {spec.startup_allowance:.1f} s "
                               f"(runner's clock)")
        train_limit = training_limit(spec)
        if self.t_finish is not None and now - self.t_finish > spec.finish_allowance:
            return ("timeout", f"still running {spec.finish_allowance:.1f} s after its finish event "
                               f"(the finish allowance, runner's clock)")
        if self.t_start is not None and now - self.t_start > train_limit + spec.finish_allowance:
            return ("timeout", f"not finished {train_limit + spec.finish_allowance:.1f} s after its start event "
                               f"(budget {spec.budget_seconds:.1f} s x (1 + {spec.overrun_tolerance}) "
                               f"+ finish allowance {spec.finish_allowance:.1f} s, runner's clock)")
        hard = spec.startup_allowance + train_limit + spec.finish_allowance
        if now - self.t_go > hard:
            return ("timeout", f"over the hard limit of {hard:.1f} s after launch (runner's clock)")
        return None

    def _classify(self, code: int) -> tuple:
        """Status and reason of a process that exited by itself."""
        tail = self.log.tail_text()
        verdict = sandbox_verdict(code, self.scratch, tail)
        if verdict is not None:
            return verdict
        if code != 0:
            how = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            return ("crash", f"{how}; log tail:\n{_last_lines(tail)}")
        if self.t_start is None:
            return ("crash", f"exited before its start event; log tail:\n{_last_lines(tail)}")
        if self.t_finish is None:
            return ("crash", "exited without a finish event (trial.finish() was not called)")
        seconds, limit = self.t_finish - self.t_start, training_limit(self.spec)
        if seconds > limit:
            return ("invalid", f"trained past its budget: {seconds:.2f} s between start and finish events "
                               f"> {limit:.2f} s allowed (runner's clock)")
        if self.weights_problem:
            return ("crash", self.weights_problem)
        return ("ok", "")

    def _result(self, status: str, reason: str) -> TrialResult:
        spec, fin = self.spec, self.finish_event
        started = self.t_start is not None
        return TrialResult(
            trial_id=spec.trial_id, status=status, reason=reason,
            training_seconds=(self.t_finish - self.t_start) if started and self.t_finish else 0.0,
            startup_seconds=((self.t_ready or self.t_start) - self.t_launch) if started else 0.0,
            total_seconds=time.monotonic() - self.t_launch,
            budget_seconds=spec.budget_seconds, budget_kind=spec.budget_kind,
            peak_vram_mb=_number(fin.get("peak_vram_mb")) or 0.0,
            tokens=_count(fin.get("tokens")), steps=_count(fin.get("steps")),
            backend=str(fin.get("backend", ""))[:TEXT_FIELD_MAX],
            flops_per_token=_number(fin.get("flops_per_token")),
            device=device_name(spec), seed=spec.seed, loss_curve=list(self.curve),
            timeline=dict(self.timeline), log_tail=self.log.tail_text())


def launch(spec: TrialSpec, on_event=None) -> Running:
    """Start the candidate in a fresh scratch folder holding only train.py (it may block until go())."""
    root = spec.scratch_root or None
    if root:
        Path(root).mkdir(parents=True, exist_ok=True)
    safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", spec.trial_id)[:64]
    scratch = Path(tempfile.mkdtemp(prefix=f"popsearch-{safe_id}-", dir=root))
    (scratch / "train.py").write_text(spec.source)
    running = Running(spec, scratch, on_event)
    try:
        running._spawn()
    except BaseException:
        if not spec.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
            violations_path(scratch).unlink(missing_ok=True)
        raise
    return running


def judge_trial(partial: Partial, spec: TrialSpec) -> TrialResult:
    """Have the judge score a trial that trained to the end (status 'ok'); finish the result; clean up."""
    result = partial.result
    judge_dir = None
    try:
        if result.status == "ok":
            judge_dir = Path(tempfile.mkdtemp(prefix="popsearch-judge-", dir=partial.scratch.parent))
            _judge_into(result, spec, partial, judge_dir)
    finally:
        if not spec.keep_scratch:
            shutil.rmtree(partial.scratch, ignore_errors=True)
            violations_path(partial.scratch).unlink(missing_ok=True)
            Path(partial.weights).unlink(missing_ok=True)
            if judge_dir is not None:
                shutil.rmtree(judge_dir, ignore_errors=True)
    result.total_seconds = time.monotonic() - partial.t_launch
    return result


def _judge_into(result: TrialResult, spec: TrialSpec, partial: Partial, judge_dir: Path) -> None:
    """Run the judge on the ORIGINAL source (not the scratch copy the candidate could edit) and its weights."""
    from judge.run_judge import run_judge
    train_py, weights = judge_dir / "train.py", judge_dir / "weights.pt"
    train_py.write_text(spec.source)
    shutil.move(str(partial.weights), weights)
    cfg = JudgeConfig(seq_len=spec.seq_len, eval_tokens=spec.eval_tokens, eval_batch=spec.eval_batch,
                      probe_positions=spec.probe_positions, timeout_seconds=spec.judge_timeout)
    result.timeline["judge_start"] = time.time()
    t0 = time.monotonic()
    try:
        verdict = run_judge(str(train_py), str(weights), spec.data_dir, cfg, spec.device,
                            env=base_env(spec), timeout=spec.judge_timeout, threads=spec.threads)
    except Exception as exc:
        verdict = {"status": "infra", "reason": f"judge failed to run: {exc!r}"}
    result.judge_seconds = time.monotonic() - t0
    result.timeline["judge_end"] = time.time()
    _apply_verdict(result, verdict)


def _apply_verdict(result: TrialResult, verdict: dict) -> None:
    status = verdict.get("status", "infra")
    result.status = status if status in S.STATUSES else "infra"
    if result.status != "ok":
        result.reason = f"judge: {verdict.get('reason') or status}"
    result.val_bpb = _number(verdict.get("val_bpb"))
    result.val_loss = _number(verdict.get("val_loss"))
    result.params = _count(verdict.get("params"))
    result.mfu = flops.mfu(result.flops_per_token, result.tokens, result.training_seconds, result.device)


def run_trial(spec: TrialSpec, on_event=None) -> TrialResult:
    """launch + go + supervise + judge_trial, one after another."""
    running = launch(spec, on_event)
    running.go()
    return judge_trial(running.supervise(), spec)


# ---------------------------------------------------------------- rules and arithmetic

def snapshot_weights(handed: Path, snapshot: Path) -> str:
    """Copy the weights handed over at the finish event out of the trial's reach (later writes to its own
    file change nothing that is judged); '' on success, else the problem."""
    try:
        fd = os.open(handed, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        return (f"no weights file {handed.name} at the finish event ({exc.strerror}; "
                f"was the model passed to trial.start(model)?)")
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            return f"{handed.name} is not a regular file"
        with open(snapshot, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 24)
    return ""


def training_limit(spec: TrialSpec) -> float:
    """Longest allowed time between the start and finish events, runner's clock (budget + tolerance).

    In flops mode budget_seconds is the wall-clock cap the driver gives the trial."""
    return spec.budget_seconds * (1.0 + spec.overrun_tolerance)


def parent_loss_at(curve, progress: float) -> float | None:
    """The parent's loss at `progress`, linearly interpolated (held flat beyond its ends)."""
    points = sorted((float(p), float(l)) for p, l in curve
                    if l is not None and math.isfinite(float(l)) and math.isfinite(float(p)))
    if not points:
        return None
    if progress <= points[0][0]:
        return points[0][1]
    for (p0, l0), (p1, l1) in zip(points, points[1:]):
        if progress <= p1:
            return l0 if p1 == p0 else l0 + (l1 - l0) * (progress - p0) / (p1 - p0)
    return points[-1][1]


def early_stop_check(spec: TrialSpec, progress: float, loss: float | None) -> str:
    """Reason to stop when this report is worse than the parent's curve by the margin, else ''."""
    if not spec.parent_curve or spec.early_stop_margin <= 0 or progress < spec.early_stop_min_progress:
        return ""
    ref = parent_loss_at(spec.parent_curve, progress)
    if ref is None:
        return ""
    limit = ref * (1.0 + spec.early_stop_margin)
    if loss is not None and loss <= limit:
        return ""
    shown = "non-finite" if loss is None else f"{loss:.4f}"
    return (f"early stop: loss {shown} at progress {progress:.2f} is above the parent's {ref:.4f} "
            f"x (1 + {spec.early_stop_margin}) = {limit:.4f}")


_DEVICE_NAMES: dict = {}


def device_name(spec: TrialSpec) -> str:
    """The name of the trial's device, asked of nvidia-smi (no CUDA context in the runner); 'cpu' on CPU."""
    return gpu_name(spec.device, spec.gpu_index)


def gpu_name(device: str, gpu_index: str | None) -> str:
    """The device's name by nvidia-smi for cuda (cached per index), 'cpu' otherwise."""
    if device != "cuda":
        return "cpu"
    index = gpu_index if gpu_index is not None else os.environ.get("CUDA_VISIBLE_DEVICES", "0")
    index = str(index).split(",")[0] or "0"
    if index not in _DEVICE_NAMES:
        _DEVICE_NAMES[index] = _query_gpu_name(index)
    return _DEVICE_NAMES[index]


def _query_gpu_name(index: str) -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", index],
                             capture_output=True, text=True, timeout=30)
        name = out.stdout.strip().splitlines()[0].strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired, IndexError):
        name = ""
    return name or "cuda"


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _count(value) -> int:
    number = _number(value)
    return int(number) if number is not None and 0 <= number < 2**62 else 0


def _last_lines(text: str, n: int = 20) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


__all__ = ["launch", "Running", "Partial", "judge_trial", "run_trial", "training_limit", "early_stop_check",
           "parent_loss_at", "device_name", "gpu_name", "base_env", "trial_env", "trial_command"]
