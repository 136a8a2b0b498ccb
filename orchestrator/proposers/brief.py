"""The brief every agent proposer gets: the packaged program.md (or the configured one) and this run's numbers.

program.md ships inside the package, so an installed popsearch hands agents the same contract as a checkout."""
from __future__ import annotations

from pathlib import Path

PACKAGED_PROGRAM = Path(__file__).resolve().parent.parent / "program.md"


def program_path(configured: str) -> Path:
    """The brief's file: proposers.program when set, else the program.md shipped with popsearch."""
    return Path(configured).expanduser() if configured else PACKAGED_PROGRAM


def program_text(configured: str) -> str:
    return program_path(configured).read_text(encoding="utf-8")


def run_numbers(cfg) -> str:
    """The section of this run's values the brief refers to (from the config the population runs with)."""
    b, p = cfg.budget, cfg.proposers
    budget = (f"{b.flops:.3g} FLOPs (6 x params x tokens)" if b.kind == "flops"
              else f"{b.seconds:g} s of training on the reference device, scaled per device kind")
    startup = (f"{b.startup_allowance:g} s (fixed)" if b.startup_allowance > 0
               else f"{b.startup_floor:g} s until the seed's start-up is measured, then 2 x it (at least 20 s)")
    early = (f"on: margin {cfg.selection.early_stop_margin:g} past progress {cfg.selection.early_stop_min_progress:g}"
             if cfg.selection.early_stop_margin > 0 else "off in this run")
    lines = ["", "## This run's numbers", "",
             f"- budget ({b.kind} mode): {budget}; overrun tolerance {b.overrun_tolerance:g}",
             f"- start-up limit: {startup}",
             f"- finish allowance: {b.finish_allowance:g} s",
             f"- judge.seq_len: {cfg.judge.seq_len} tokens per row (the model must accept T up to it); "
             f"judge.eval_tokens: {cfg.judge.eval_tokens}",
             f"- early stopping: {early}",
             f"- re-runs: a close call gets up to selection.max_runs = {cfg.selection.max_runs} runs",
             f"- agent timeout: {p.agent_timeout:g} s", ""]
    return "\n".join(lines)


def full_brief(cfg) -> str:
    """program.md followed by this run's numbers: what the agent's {program} file holds."""
    return program_text(cfg.proposers.program).rstrip("\n") + "\n" + run_numbers(cfg)
