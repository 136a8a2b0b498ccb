"""What a person watching a run sees: one live line per actor, and one line per finished trial.

On a terminal the actor lines are redrawn in place; in a log they are printed every LOG_EVERY seconds."""
from __future__ import annotations

import time

REFRESH_SECONDS = 1.0
LOG_EVERY = 30.0


def actor_line(slot: dict, state: dict | None, now: float) -> str:
    """`cpu0  m2 t00042 training  3.1s left  loss 5.123` (pure, for tests and the board)."""
    name = slot.get("slot", "?")
    if not state:
        return f"{name:<6} idle"
    phase = state.get("phase", "?")
    left = ""
    if phase == "training" and state.get("t_start"):
        left = f"{max(0.0, state.get('budget', 0) - (now - state['t_start'])):6.1f}s left"
    loss = state.get("loss")
    loss_txt = f"loss {loss:.4f}" if isinstance(loss, (int, float)) else ""
    return f"{name:<6} {state.get('member', ''):<4} {state.get('trial_id', ''):<10} {phase:<9} {left:<13} {loss_txt}"


def finished_line(row: dict) -> str:
    val = row.get("val_bpb")
    val_txt = f"{val:.4f}" if isinstance(val, (int, float)) else "   -  "
    train = row.get("training_seconds") or 0.0
    return (f"{row['trial_id']:<10} {row['member']:<4} {row['proposer']:<8} {row['status']:<8} "
            f"val_bpb {val_txt}  {row['verdict']:<8} train {train:5.1f}s  {(row.get('message') or '')[:60]}")


class LiveBoard:
    """Prints finished trials as they come and the actors' live lines."""

    def __init__(self, out):
        self.out = out
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.drawn = 0
        self.last_poll = 0.0
        self.last_log = time.time()

    def finished(self, row: dict) -> None:
        self._erase()
        print(finished_line(row), file=self.out, flush=True)

    def tick(self, ray, actors, slots) -> None:
        now = time.time()
        if now - self.last_poll < REFRESH_SECONDS:
            return
        self.last_poll = now
        try:
            states = ray.get([a.live.remote() for a in actors], timeout=5)
        except Exception:
            return
        lines = []
        for slot, live in zip(slots, states):
            running = sorted(live.values(), key=lambda s: s.get("phase") != "training")
            lines.append(actor_line(slot, running[0] if running else None, now))
        if self.tty:
            self._erase()
            print("\n".join(lines), file=self.out, flush=True)
            self.drawn = len(lines)
        elif now - self.last_log >= LOG_EVERY:
            self.last_log = now
            print("\n".join("  | " + ln for ln in lines), file=self.out, flush=True)

    def _erase(self) -> None:
        if self.tty and self.drawn:
            self.out.write("\x1b[F\x1b[2K" * self.drawn)
            self.drawn = 0

    def close(self) -> None:
        self._erase()
