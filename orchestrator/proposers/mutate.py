"""The built-in offline proposer: perturb one or two constants of train.py's hyperparameter block by type.

Floats by factors, small ints by steps, large ints by a quarter, batch/head/length/window sizes by powers of
two, window patterns from a small set, booleans flipped; never seeds, COMPILE or peak FLOPS; every draw is checked."""
from __future__ import annotations

import random

from orchestrator.proposers.base import validate_source
from trainer.constants import apply_overrides, read_constants

FLOAT_FACTORS = (0.5, 0.7, 1.4, 2.0)
ZERO_FLOAT_STARTS = (0.01, 0.05, 0.1)    # a float at 0.0 moves to one of these
SIGNIFICANT_DIGITS = 4                   # mutated floats are rounded to this many
SMALL_INT_LIMIT = 16                     # ints below this move by +-1, larger ones by +-25%
LARGE_INT_FACTORS = (0.75, 1.25)
INT_GRANULARITY_CAP = 64                 # large ints move in steps of min(this, their power-of-two factor,
INT_GRANULARITY_SHARE = 8                # ... value / this)
POW2_KEYS = ("BATCH", "HEADS", "SEQ_LEN", "WINDOW")       # sizes that move by x2 or /2
FRACTION_KEYS = ("FRAC", "WARMUP", "COOLDOWN", "WARMDOWN")   # floats that must stay in [0, 1]
BETA_KEYS = ("BETA", "MOMENTUM")         # other floats in (0, 1): their distance to 1 moves by a factor
PATTERN_KEY = "PATTERN"
PATTERNS = ("SSSL", "SL", "L", "SSL", "SLSL")
PROTECTED = ("COMPILE",)                 # never mutated
PROTECTED_PARTS = ("SEED", "PEAK_FLOPS")  # names containing these are never mutated (seeds are not research;
                                          # a GPU's peak FLOPS only scales the MFU a script prints)
HEAD_PAIRS = (("MODEL_DIM", "N_HEADS"), ("N_EMBD", "N_HEAD"))   # (width, head count): popsearch's, upstream's
DEFAULT_BOUNDS = {"SEQ_LEN": (64, 16384)}
MAX_DRAWS = 64                           # draws tried before giving up on a valid mutation


def _sig(value: float) -> float:
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def is_protected(name: str) -> bool:
    return name in PROTECTED or any(part in name for part in PROTECTED_PARTS)


def _mutable(name: str, value) -> bool:
    if is_protected(name) or isinstance(value, (tuple, list)):
        return False
    if isinstance(value, str):
        return PATTERN_KEY in name
    return isinstance(value, (bool, int, float))


def mutable_constants(source_or_constants) -> dict:
    """{name: value} of the constants this proposer may change (from a source or read_constants' dict)."""
    consts = source_or_constants if isinstance(source_or_constants, dict) else read_constants(source_or_constants)
    return {k: v for k, v in consts.items() if _mutable(k, v)}


def _is_fraction(name: str) -> bool:
    return any(key in name for key in FRACTION_KEYS)


def _is_beta(name: str) -> bool:
    return not _is_fraction(name) and any(key in name for key in BETA_KEYS)


def _mutate_int(name: str, value: int, rng: random.Random) -> int:
    if any(key in name for key in POW2_KEYS):
        return value * 2 if value % 2 or rng.random() < 0.5 else value // 2
    if abs(value) < SMALL_INT_LIMIT:
        return value + rng.choice((-1, 1))
    size, sign = abs(value), (1 if value > 0 else -1)
    grain = max(1, min(INT_GRANULARITY_CAP, size & -size, size // INT_GRANULARITY_SHARE))
    return sign * max(grain, round(size * rng.choice(LARGE_INT_FACTORS) / grain) * grain)


def _mutate_float(name: str, value: float, rng: random.Random) -> float:
    if _is_beta(name) and 0.0 < value < 1.0:
        return _sig(1.0 - (1.0 - value) * rng.choice(FLOAT_FACTORS))
    if value == 0.0:
        return rng.choice(ZERO_FLOAT_STARTS)
    return _sig(value * rng.choice(FLOAT_FACTORS))


def mutate_value(name: str, value, rng: random.Random):
    """One perturbed value of the constant's own type (may equal the old one; the caller checks)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return _mutate_int(name, value, rng)
    if isinstance(value, float):
        return _mutate_float(name, value, rng)
    return rng.choice([p for p in PATTERNS if p != value] or list(PATTERNS))


def _value_problem(name: str, old, value, bounds: dict) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and old >= 1 > value:
        return f"{name} = {value} must stay >= 1"
    if isinstance(value, float) and _is_fraction(name) and not 0.0 <= value <= 1.0:
        return f"{name} = {value} must stay in [0, 1]"
    if isinstance(value, float) and _is_beta(name) and not 0.0 < value < 1.0:
        return f"{name} = {value} must stay in (0, 1)"
    lo, hi = bounds.get(name, (None, None))
    if lo is not None and not lo <= value <= hi:
        return f"{name} = {value} is outside its bounds [{lo}, {hi}]"
    return ""


def _heads_rule(c: dict) -> str:
    for dim, heads in HEAD_PAIRS:
        if {dim, heads} <= c.keys() and (c[dim] % c[heads] or (c[dim] // c[heads]) % 2):
            return f"{dim} {c[dim]} must split into {heads} {c[heads]} heads of even size"
    return ""


def _batch_rule(c: dict) -> str:
    if {"TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE", "SEQ_LEN"} <= c.keys():
        step = c["DEVICE_BATCH_SIZE"] * c["SEQ_LEN"]
        if c["TOTAL_BATCH_SIZE"] % step:
            return (f"TOTAL_BATCH_SIZE {c['TOTAL_BATCH_SIZE']} must be a multiple of "
                    f"DEVICE_BATCH_SIZE x SEQ_LEN = {step}")
    return ""


def _window_rule(c: dict) -> str:
    if {"SHORT_WINDOW", "SEQ_LEN"} <= c.keys() and c["SHORT_WINDOW"] > c["SEQ_LEN"]:
        return f"SHORT_WINDOW {c['SHORT_WINDOW']} must not exceed SEQ_LEN {c['SEQ_LEN']}"
    return ""


def _schedule_rule(c: dict) -> str:
    def total(*parts):
        return sum(v for k, v in c.items() if isinstance(v, float) and "FRAC" in k and any(p in k for p in parts))
    warm, cool = total("WARMUP"), total("COOLDOWN", "WARMDOWN")
    if warm + cool > 1.0:
        return f"warm-up ({warm}) and cool-down ({cool}) fractions add up to more than 1"
    return ""


def _gate_rule(c: dict) -> str:
    if {"VE_GATE_CHANNELS", "MODEL_DIM"} <= c.keys() and c["VE_GATE_CHANNELS"] > c["MODEL_DIM"]:
        return f"VE_GATE_CHANNELS {c['VE_GATE_CHANNELS']} must not exceed MODEL_DIM {c['MODEL_DIM']}"
    return ""


SHAPE_RULES = (_heads_rule, _batch_rule, _window_rule, _schedule_rule, _gate_rule)


def check_constraints(old: dict, new: dict, bounds: dict | None = None) -> str:
    """'' when the mutated constants `new` are valid, else what is wrong. `old` are the parent's values:
    only changed values are range-checked, and a rule the parent already breaks is not enforced."""
    limits = {**DEFAULT_BOUNDS, **(bounds or {})}
    for name, value in new.items():
        if name in old and value != old[name]:
            problem = _value_problem(name, old[name], value, limits)
            if problem:
                return problem
    for rule in SHAPE_RULES:
        problem = rule(new)
        if problem and not rule(old):
            return problem
    return ""


def _draw(consts: dict, names: list[str], n: int, rng: random.Random) -> dict:
    changes = {}
    for name in rng.sample(names, n):
        new = mutate_value(name, consts[name], rng)
        if new != consts[name]:
            changes[name] = new
    return changes


def propose(parent_source: str, rng: random.Random, max_changes: int = 2,
            bounds: dict | None = None) -> tuple[str, str]:
    """(new source, message): 1..max_changes constants of the parent perturbed, the result valid.

    bounds: {NAME: (low, high)} limits on top of DEFAULT_BOUNDS. Raises ValueError when no valid
    mutation is found in MAX_DRAWS draws."""
    consts = read_constants(parent_source)
    names = sorted(mutable_constants(consts))
    if not names:
        raise ValueError("mutate: train.py has no mutable constants in its hyperparameter block")
    last = "no draw changed a value"
    for _ in range(MAX_DRAWS):
        n = rng.randint(1, max(1, min(max_changes, len(names))))
        changes = _draw(consts, names, n, rng)
        if not changes:
            continue
        last = check_constraints(consts, {**consts, **changes}, bounds)
        if last:
            continue
        source = apply_overrides(parent_source, changes)
        ok, last = validate_source(source)
        if ok:
            message = "; ".join(f"{k} {consts[k]!r} -> {v!r}" for k, v in sorted(changes.items()))
            return source, f"mutate: {message}"
    raise ValueError(f"mutate: no valid mutation in {MAX_DRAWS} draws (last problem: {last})")
