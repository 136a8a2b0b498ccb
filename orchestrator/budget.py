"""Budget arithmetic of the driver: normalized seconds per device, start-up allowance, trial specs.

Pure functions; the actors report device speeds, these turn them into each trial's budget."""
from __future__ import annotations

from trainer import budget_math
from trainer.spec import TrialSpec

STARTUP_MULTIPLE = 2.0       # allowance = this x the seed's measured start-up on the device ...
STARTUP_MIN = 20.0           # ... but never below this many seconds


def reference_speed(configured: float, speeds: list[float]) -> float:
    """The speed the reference budget refers to: the configured one, else the median device."""
    if configured > 0:
        return configured
    if not speeds:
        raise ValueError("no device speeds measured: cannot normalize budgets")
    return budget_math.median_speed(speeds)


def kind_speeds(infos: list[dict]) -> dict[str, float]:
    """One speed per device kind (the median of its actors' measurements), so that identical devices
    get identical budgets and measurement noise of one actor does not skew its trials."""
    by_kind: dict[str, list[float]] = {}
    for info in infos:
        by_kind.setdefault(info["device_name"], []).append(float(info["speed"]))
    return {kind: budget_math.median_speed(v) for kind, v in by_kind.items()}


budget_factor = budget_math.budget_factor      # how much longer (>1) this device trains than the reference


def startup_allowance(measured: list[float], floor: float) -> float:
    """Seconds a trial may take before its training starts, from the seed's start-ups on this device.

    Before any start-up was measured, the config's floor applies."""
    if not measured:
        return floor
    return budget_math.startup_allowance(measured, STARTUP_MIN, STARTUP_MULTIPLE)


def overlap_on(setting: str, slot: dict) -> bool:
    """Whether the next trial starts up while this one trains. `auto`: on GPUs, and on CPU only where each
    slot has a spare core for its neighbours' start-up and judge (else they would slow the trial that trains)."""
    return setting == "on" or (setting == "auto" and (slot.get("device") == "cuda" or bool(slot.get("spare_core"))))


def cpu_slots(configured: int, cores: int, threads: int) -> tuple[int, bool]:
    """CPU mode: how many trial actors, and whether each has a spare core (default: one slot per 2 x threads)."""
    n = configured or max(1, cores // (2 * threads))
    return n, cores >= 2 * n * threads


def trial_spec(cfg, job, slot: dict, data_dir: str, seed: int, startup: float, parent_curve=None,
               operator_env=None) -> TrialSpec:
    """The TrialSpec for one run of a job on one actor slot (slot carries device, speed and factor);
    operator_env: the operator settings every trial and judge process gets (trainer.trial_env.operator_env)."""
    b, j, r = cfg.budget, cfg.judge, cfg.resources
    seconds = b.seconds * slot["budget_factor"]
    if b.kind == "flops":               # the FLOPs are the budget; seconds only cap a very slow candidate
        seconds = max(seconds, budget_math.flops_time_cap(b.flops, slot["speed"], slot["device"]))
    return TrialSpec(
        trial_id=job.run_id(),
        source=job.source,
        data_dir=data_dir,
        budget_kind=b.kind,
        budget_seconds=seconds,
        budget_flops=b.flops,
        device=slot["device"],
        gpu_index=slot.get("gpu_index"),
        seed=seed,
        threads=r.threads_per_trial,
        startup_allowance=startup,
        finish_allowance=b.finish_allowance,
        overrun_tolerance=b.overrun_tolerance,
        keep_scratch=r.keep_scratch,
        compile_scope=job.member if r.compile_cache == "member" else "",
        log_cap_bytes=r.log_cap_bytes,
        seq_len=j.seq_len,
        eval_tokens=j.eval_tokens,
        eval_batch=j.eval_batch,
        probe_positions=j.probe_positions,
        judge_timeout=j.timeout_seconds,
        parent_curve=list(parent_curve or []),
        early_stop_margin=cfg.selection.early_stop_margin,
        early_stop_min_progress=cfg.selection.early_stop_min_progress,
        wait_for_go=overlap_on(r.overlap, slot),
        operator_env=dict(operator_env or {}),
    )
