"""The brief every agent proposer gets: the packaged program.md (or the configured one) and this run's numbers.

program.md ships inside the package, so an installed popsearch hands agents the same contract as a checkout."""
from __future__ import annotations

from pathlib import Path

from judge.adopted import ADOPTED, PREPARE_NAMES, protocol

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


def protocol_section(source: str) -> str:
    """Which protocol the member's train.py follows, and what that means for an edit."""
    if protocol(source) == ADOPTED:
        body = [f"This member's train.py is an **adopted single-GPU script**: it trains at top level and imports "
                f"{', '.join(PREPARE_NAMES)} from `prepare`, which popsearch provides (not a file you can edit). "
                "Keep that shape: no build_model(), no `__main__` guard needed. `make_dataloader(tokenizer, B, T, "
                "'train')` yields (inputs, targets, epoch); any other split is a violation. TIME_BUDGET is this "
                "trial's budget in seconds; the clock starts at the second batch, and the module-level model is "
                "handed to the judge at `evaluate_bpb(model, ...)` or at the last batch before the budget is "
                "spent. The judge rebuilds the model by running the top-level code up to the first "
                "make_dataloader call (so build the model before it) and scores it itself; what the script "
                "prints about its val_bpb is ignored."]
    else:
        body = ["This member's train.py follows popsearch's **native protocol**: build_model(), training under "
                "`if __name__ == \"__main__\":` with trainer.harness.Trial (trial.start(model) ... trial.finish())."]
    return "\n".join(["", "## This member's train.py", "", *body, ""])


def full_brief(cfg, source: str | None = None) -> str:
    """program.md followed by this run's numbers (and, given the member's train.py, its protocol): what the
    agent's {program} file holds."""
    text = program_text(cfg.proposers.program).rstrip("\n") + "\n" + run_numbers(cfg)
    return text + (protocol_section(source) if source is not None else "")
