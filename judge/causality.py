"""The causality probe: replacing the tokens after position t must not move any logit at positions <= t.

Also checks that the model is deterministic in eval mode; tolerances follow the dtype of the logits."""
from __future__ import annotations

import torch

# Slack for a causal model whose prefix logits should come out bit-identical: relative to 1 + max|logit|.
# float32: rounding noise only. bfloat16/float16: about one unit in the last place at the largest logit.
EXACT_SLACK = {torch.float64: 1e-9, torch.float32: 1e-5, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -10}
NONDET_FACTOR = 4.0        # tolerance >= this many times the change seen between two identical forwards
NONDET_LIMIT = 16.0        # a repeat differing by more than this many slacks is "not deterministic"
RESAMPLE_TRIES = 8         # redraws so that the token right after the cut really changes


def probe(model, rows: torch.Tensor, positions, seed: int) -> tuple[bool, str]:
    """Check causality of model on real rows (N, T) at `positions` cut points (an int count or a list of t).

    Runs under the caller's autocast/no_grad context plus its own no_grad; returns (ok, reason)."""
    if rows.dim() != 2 or rows.shape[1] < 2:
        return False, f"causality probe needs rows of shape (N, T>=2), got {tuple(rows.shape)}"
    gen = torch.Generator().manual_seed(int(seed))
    cuts = cut_points(rows.shape[1], positions, gen)
    with torch.no_grad():
        base, err = _logits(model, rows)
        if err:
            return False, err
        again, err = _logits(model, rows)
        if err:
            return False, err
        if not bool(torch.isfinite(base).all()):
            return False, "causality probe: the model returns non-finite logits"
        scale = float(base.abs().max())
        slack = EXACT_SLACK.get(base.dtype, 1e-5) * (1.0 + scale)
        repeat = _max_change(again, base)
        del again
        if repeat > NONDET_LIMIT * slack:
            return False, (f"model is not deterministic in eval mode: two forwards of the same rows differ by "
                           f"{repeat:.3g} (limit {NONDET_LIMIT * slack:.3g})")
        tol = max(slack, NONDET_FACTOR * repeat)
        worst = 0.0
        for t in cuts:
            changed, err = _logits(model, replace_after(rows, t, gen))
            if err:
                return False, err
            moved = _max_change(changed[:, :t + 1], base[:, :t + 1])
            if moved > tol:
                return False, (f"looks ahead: replacing the tokens after position {t} moved logits at positions "
                               f"<= {t} by {moved:.3g} (tolerance {tol:.3g})")
            worst = max(worst, moved)
    return True, f"causal at cut points {cuts}: max change {worst:.3g} (tolerance {tol:.3g}, repeat {repeat:.3g})"


def cut_points(seq_len: int, positions, gen: torch.Generator) -> list[int]:
    """Distinct cut points t in [0, seq_len - 2]: `positions` random ones, or the given list."""
    if isinstance(positions, int):
        count = max(1, min(positions, seq_len - 1))
        return sorted(int(t) for t in torch.randperm(seq_len - 1, generator=gen)[:count])
    cuts = sorted({int(t) for t in positions})
    if not cuts or cuts[0] < 0 or cuts[-1] > seq_len - 2:
        raise ValueError(f"causality probe: cut points {cuts} must lie in [0, {seq_len - 2}]")
    return cuts


def replace_after(rows: torch.Tensor, t: int, gen: torch.Generator) -> torch.Tensor:
    """rows with every token after position t replaced by tokens drawn from the rows themselves.

    Drawing from the rows keeps the replacements looking like text; the token at t + 1 always changes."""
    pool = rows.reshape(-1).cpu()
    out = rows.clone()
    tail = pool[torch.randint(len(pool), (rows.shape[0], rows.shape[1] - t - 1), generator=gen)]
    for _ in range(RESAMPLE_TRIES):
        same = tail[:, 0] == rows[:, t + 1].cpu()
        if not bool(same.any()):
            break
        tail[same, 0] = pool[torch.randint(len(pool), (int(same.sum()),), generator=gen)]
    out[:, t + 1:] = tail.to(rows.device)
    return out


def _logits(model, rows: torch.Tensor):
    """(logits, None) or (None, reason) when the output is not a (N, T, V) floating tensor."""
    out = model(rows)
    if type(out) is not torch.Tensor or out.dim() != 3 or tuple(out.shape[:2]) != tuple(rows.shape):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return None, f"causality probe: forward returned {shape} for input {tuple(rows.shape)}"
    if not out.is_floating_point():
        return None, f"causality probe: forward returned {out.dtype} logits"
    return out, None


def _max_change(a: torch.Tensor, b: torch.Tensor) -> float:
    diff = (a.float() - b.float()).abs()
    bad = ~torch.isfinite(diff)
    return float("inf") if bool(bad.any()) else float(diff.max())
