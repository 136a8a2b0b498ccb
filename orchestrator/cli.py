"""The `popsearch` command: run, adopt, resume, status, report, trial, prepare, calibrate, program, repair.

Each subcommand parses its arguments, loads the config, and hands off to one plain function."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from orchestrator.archive import (ArchiveLocked, NotAnArchive, check_archive, check_unlocked, is_archive,
                                  member_names)
from orchestrator.config import ConfigError, load, validate

SUMMARY_KEYS = ("status", "val_bpb", "val_loss", "reason", "training_seconds", "startup_seconds", "judge_seconds",
                "total_seconds", "budget_seconds", "steps", "tokens", "params", "peak_vram_mb", "mfu", "backend",
                "device", "seed")


EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """A file or folder named on the command line that can't be used; the message says which and why."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT reached the driver (a KeyboardInterrupt, which Ray's blocking calls pass through)."""

    received: list = []                  # the signals caught; Ray's calls re-raise a bare KeyboardInterrupt

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_signal() -> int:
    return Interrupted.received[0] if Interrupted.received else signal.SIGINT


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    catch_stop_signals()
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        return fail(f"config error: {exc}")
    except (BadInput, NotAnArchive, ArchiveLocked) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        signum = stop_signal()
        print(f"popsearch: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum


def fail(line: str) -> int:
    print(f"popsearch: {line}", file=sys.stderr)
    return EXIT_BAD_INPUT


def catch_stop_signals() -> None:
    """SIGTERM (schedulers, `timeout`, `ray job stop`) and SIGINT (Ctrl-C) both raise Interrupted in the main
    thread; a second signal during the clean-up is ignored, so the clean-up finishes."""
    def on_signal(signum, frame):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        Interrupted.received.append(signum)
        raise Interrupted(signum)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="popsearch", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a population (no config: the built-in CPU demo)")
    r.add_argument("config", nargs="?", help="YAML config (default: the built-in CPU demo)")
    r.add_argument("--archive", help="archive folder (overrides the config's archive)")
    r.add_argument("--max-trials", type=int, help="stop after this many finished trials in the archive")
    r.add_argument("--accept-config-change", action="store_true",
                   help="the archive exists and this config differs from its config.yaml: take the change "
                        "(a change of budget.*, judge.* or data.* starts a new score segment)")
    r.set_defaults(func=cmd_run)

    ad = sub.add_parser("adopt", help="a single-GPU project (git checkout with results.tsv, or one train.py) as "
                                      "a new population: its train.py is the seed, its history the lineage")
    ad.add_argument("path")
    ad.add_argument("--config", help="YAML config (default: the built-in CPU demo, without its overrides)")
    ad.add_argument("--archive", help="archive folder (overrides the config's archive)")
    ad.add_argument("--max-trials", type=int, help="stop after this many finished trials in the archive")
    ad.set_defaults(func=cmd_adopt)

    s = sub.add_parser("resume", help="continue a population from its archive")
    s.add_argument("archive")
    s.add_argument("--max-trials", type=int)
    s.set_defaults(func=cmd_resume)

    st = sub.add_parser("status", help="members, heads, scores and what is in flight")
    st.add_argument("archive")
    st.set_defaults(func=cmd_status)

    rep = sub.add_parser("report", help="write ARCHIVE/report/ (leaderboard, progress plot, lineage)")
    rep.add_argument("archive")
    rep.set_defaults(func=cmd_report)

    t = sub.add_parser("trial", help="train and judge one train.py")
    t.add_argument("train_py", nargs="?", help="candidate train.py (default: the config's seed)")
    t.add_argument("--config", help="YAML config (default: the built-in CPU demo)")
    t.add_argument("--budget", type=float, help="training seconds")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    t.set_defaults(func=cmd_trial)

    pr = sub.add_parser("prepare", help="build the corpus, tokenizer and token cache")
    pr.add_argument("--corpus", help="builtin | local:PATH | climbmix")
    pr.add_argument("--config", help="YAML config (default: the built-in CPU demo)")
    pr.set_defaults(func=cmd_prepare)

    ca = sub.add_parser("calibrate", help="this device's speed on the fixed reference workload "
                                          "(the number budget.reference_speed takes)")
    ca.add_argument("--device", help="cuda | cpu (default: cuda when there is one)")
    ca.add_argument("--repeats", type=int, help="timed repeats (the median is the speed)")
    ca.set_defaults(func=cmd_calibrate)

    pg = sub.add_parser("program", help="print the research brief agents get (the packaged program.md, or "
                                         "the config's proposers.program), to start a custom one")
    pg.add_argument("--config", help="YAML config (default: the built-in CPU demo)")
    pg.set_defaults(func=cmd_program)

    rp = sub.add_parser("repair", help="rebuild the ledger from the archive's commit trailers")
    rp.add_argument("archive")
    rp.set_defaults(func=cmd_repair)
    return p


def config_with_overrides(args):
    """The config of `run` / `adopt` with the command line's --archive and --max-trials applied."""
    cfg = load(args.config)
    if args.archive:
        cfg.archive = args.archive
    if args.max_trials is not None:
        cfg.stop.max_trials = args.max_trials
    return cfg


def cmd_run(args) -> int:
    return run_population(config_with_overrides(args), accept_change=args.accept_config_change)


def cmd_adopt(args) -> int:
    """Read and check the project, create the archive with its history, then run like `popsearch run`."""
    from orchestrator.adopt import AdoptError, create_archive, read_project
    cfg = config_with_overrides(args)
    validate(cfg, where=cfg.source or "<config>")
    try:
        project = read_project(args.path)
    except AdoptError as exc:
        raise BadInput(str(exc)) from None
    path = Path(cfg.archive).expanduser().resolve()
    if is_archive(path) or (path.exists() and any(path.iterdir())):
        raise BadInput(f"{path}: the archive folder of `adopt` must be new or empty (--archive names another)")
    if cfg.population.overrides:
        print("popsearch: population.overrides left out: the seed is the project's train.py, byte for byte")
        cfg.population.overrides = {}
    cfg.population.seed_train_py = str(project.path if project.path.is_file() else project.path / "train.py")
    create_archive(project, path, member_names(cfg.population.size))
    print(f"adopted {project.path}: {len(project.commits)} commit(s), {len(project.runs)} results row(s) "
          f"imported into {path}")
    cfg.archive = str(path)
    return run_population(cfg)


def cmd_resume(args) -> int:
    path = check_archive(args.archive)
    saved = path / "config.yaml"
    if not saved.exists():
        raise BadInput(f"{path} is not a popsearch archive (no config.yaml)")
    cfg = load(saved)
    cfg.archive = str(path)
    if args.max_trials is not None:
        cfg.stop.max_trials = args.max_trials
    return run_population(cfg)


def run_population(cfg, accept_change: bool = False) -> int:
    """Check what the run needs, run it, write the report; a signal or a lost cluster ends it with one line
    that says how to resume (pending trials stay in the archive). On an existing archive a config that differs
    from its config.yaml is refused unless accept_change (orchestrator/config_change.py)."""
    from orchestrator.config import seed_source
    from orchestrator.config_change import check
    validate(cfg, where=cfg.source or "<config>")
    path = Path(cfg.archive).expanduser().resolve()
    if not is_archive(path):
        seed_source(cfg)                   # a seed that does not parse is refused before anything starts
    else:
        check_unlocked(path)               # told before the driver (and torch) is even imported
        for change in check(cfg, path, accept_change):
            print(f"config change accepted: {change}")
    from orchestrator.driver import ClusterLost, run
    try:
        archive = run(cfg)
    except KeyboardInterrupt:
        signum = stop_signal()
        print(f"popsearch: interrupted by {signal.Signals(signum).name}; pending trials are kept: "
              f"`popsearch resume {path}` continues where this stopped", file=sys.stderr)
        return 128 + signum
    except ClusterLost as exc:
        print(f"popsearch: {exc}; pending trials are kept: `popsearch resume {path}` continues once Ray is "
              f"back", file=sys.stderr)
        return 1
    write_report_quietly(archive)
    return 0


def write_report_quietly(archive: Path) -> None:
    from orchestrator.report import write_report
    try:
        out = write_report(archive)
        print(f"report: {out}")
    except Exception as exc:  # a report is a view; failing to draw it never fails the run
        print(f"popsearch: could not write the report: {exc}", file=sys.stderr)


def cmd_program(args) -> int:
    from orchestrator.proposers.brief import program_text
    sys.stdout.write(program_text(load(args.config).proposers.program))
    return 0


def cmd_status(args) -> int:
    path = check_archive(args.archive)
    import gc
    gc.disable()        # a short-lived reader that builds big structures and frees none: collections only cost
    from orchestrator.status import status_text
    print(status_text(path))
    return 0


def cmd_report(args) -> int:
    path = check_archive(args.archive)
    from orchestrator.report import write_report
    print(f"report: {write_report(path)}")
    return 0


def cmd_repair(args) -> int:
    path = check_archive(args.archive)
    from orchestrator.archive import repair
    print(repair(path))
    return 0


def cmd_calibrate(args) -> int:
    from trainer import calibrate
    argv = (["--device", args.device] if args.device else []) + (["--repeats", str(args.repeats)] if args.repeats else [])
    calibrate.main(argv)
    return 0


def cmd_prepare(args) -> int:
    from judge.prepare import prepare
    cfg = load(args.config)
    if args.corpus:
        cfg.data.corpus = args.corpus
        validate(cfg, where="--corpus")
    spec = prepare(cfg.data, log=print)
    print(f"data: {spec.data_dir}")
    print(f"train tokens: {spec.n_train_tokens}  val tokens: {spec.n_val_tokens}  vocab: {spec.vocab_size}")
    return 0


def cmd_trial(args) -> int:
    from orchestrator.config import seed_source
    cfg = load(args.config)
    if args.budget:
        cfg.budget.seconds = args.budget
        validate(cfg, where="--budget")
    source = candidate_source(args.train_py) if args.train_py else seed_source(cfg)
    from judge.prepare import prepare
    from orchestrator import budget as budget_rules
    from orchestrator.driver import checked_operator_settings
    from orchestrator.population import Job
    from trainer.runner import run_trial
    spec_data = prepare(cfg.data, log=print)
    device = args.device or cfg.resources.device
    if device == "auto":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    job = Job(trial_id="trial", member="cli", parent_commit="", commit="", source=source, proposer="cli", message="")
    slot = {"device": device, "budget_factor": 1.0, "gpu_index": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if cfg.budget.kind == "flops":
        from trainer.calibrate import measure_speed_isolated
        slot["speed"] = measure_speed_isolated(device)
    spec = budget_rules.trial_spec(cfg, job, slot, spec_data.data_dir, args.seed,
                                   max(cfg.budget.startup_floor, cfg.budget.startup_allowance),
                                   operator_env=checked_operator_settings())
    spec.wait_for_go = False
    result = run_trial(spec, on_event=progress_printer()).to_dict()
    print(summary_block(result))
    return 0 if result["status"] == "ok" else 1


def candidate_source(train_py: str) -> str:
    path = Path(train_py)
    if not path.is_file():
        raise BadInput(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    return path.read_text()


def progress_printer():
    state = {"last": -1}

    def on_event(event: dict) -> None:
        if event.get("event") == "start":
            print("training started", flush=True)
        elif event.get("event") == "progress":
            pct = int(100 * event.get("progress", 0))
            if pct // 10 != state["last"] // 10:
                state["last"] = pct
                loss = event.get("loss")
                print(f"  {pct:3d}%  loss {loss:.4f}" if isinstance(loss, float) else f"  {pct:3d}%", flush=True)
    return on_event


def summary_block(result: dict) -> str:
    lines = ["---"]
    for key in SUMMARY_KEYS:
        value = result.get(key)
        if isinstance(value, float):
            value = f"{value:.6f}" if key in ("val_bpb", "val_loss", "mfu") else f"{value:.2f}"
        lines.append(f"{key}: {'' if value is None else value}")
    tail = (result.get("log_tail") or "").strip().splitlines()[-5:]
    if result.get("status") != "ok" and tail:
        lines.append("log_tail: |")
        lines.extend("  " + t for t in tail)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
