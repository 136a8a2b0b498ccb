"""Issue 10's bookkeeping benchmark: the real Driver, Archive and ledger with fake instant actors on 100 fake GPUs
(no Ray, no training), printing record, loop, resume, status, report, read_parquet, disk and inodes at each size.

`python bench/scale.py --sizes 1000,10000 [--old PATH]`: PATH is a `git archive 4fb9762` copy of today's tree, run
the same way with PYTHONPATH=PATH for the old column. How each figure is taken is printed under the table."""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GPUS = 100
WINDOW = 60               # finished trials measured through the full driver loop at each size
CONFIG = "configs/cluster.yaml"
REPO = Path(__file__).resolve().parents[1]


class Ref:
    """A finished fake Ray object ref."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args, **kwargs) -> Ref:
        return Ref(self.fn(*args, **kwargs))


class FakeActor:
    """A trial actor whose run() returns an ok result at once, with a random val_bpb."""

    def __init__(self, index: int, rng: random.Random):
        self.slot, self.rng = f"cuda{index}", rng
        self.run, self.live = Method(self._run), Method(lambda: {})
        self.info = Method(lambda: {"slot": self.slot, "node": "bench", "device": "cuda", "gpu_index": index,
                                    "device_name": "Fake GPU", "speed": 57.4, "pid": os.getpid()})

    def _run(self, spec: dict, meta: dict | None = None) -> dict:
        from trainer.spec import TrialResult
        now = time.time()
        return TrialResult(trial_id=spec.get("trial_id", ""), status="ok", val_bpb=self.rng.gauss(1.0, 0.02),
                           training_seconds=300.0, startup_seconds=20.0, total_seconds=330.0, budget_seconds=300.0,
                           device="Fake GPU", seed=spec.get("seed", 0),
                           timeline={"launch": now, "judge_end": now}).to_dict()


class FakeRay:
    """The few calls the driver makes on the ray module; every ref is ready at once."""

    def cluster_resources(self) -> dict:
        return {"GPU": float(GPUS), "CPU": float(GPUS)}

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref, timeout=None):
        return [r.value for r in ref] if isinstance(ref, list) else ref.value

    def nodes(self) -> list:
        return [{"Alive": True}]

    def kill(self, actor, no_restart=True) -> None:
        pass


def bench_driver(cfg):
    """The real Driver with start_actors replaced by fake actors, and finish() timed."""
    from orchestrator import budget as budget_rules
    from orchestrator.driver import Driver

    class BenchDriver(Driver):
        record_seconds: list = []
        snapshot_seconds: list = []

        def save_snapshot(self) -> None:
            start = time.perf_counter()
            super().save_snapshot()
            self.snapshot_seconds.append(time.perf_counter() - start)

        def start_actors(self, ray) -> None:
            rng = random.Random(1)
            self.new_actor = lambda i: FakeActor(i, rng)
            self.actors = [self.new_actor(i) for i in range(int(ray.cluster_resources()["GPU"]))]
            infos = [a.info.fn() for a in self.actors]
            self.data_dirs = [str(REPO)] * len(self.actors)
            self.kinds = budget_rules.kind_speeds(infos)
            self.ref_speed = budget_rules.reference_speed(self.cfg.budget.reference_speed, [i["speed"] for i in infos])
            self.spare = True
            for info in infos:
                self.place(info)
            self.slots = infos
            self.actor_load = {i: 0 for i in range(len(self.actors))}

        def open_archive(self) -> None:
            super().open_archive()
            finish = self.archive.finish

            def timed(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return finish(*args, **kwargs)
                finally:
                    self.record_seconds.append(time.perf_counter() - start)
            self.archive.finish = timed
    return BenchDriver(cfg, out=io.StringIO())


def config(archive: Path, max_trials: int):
    from orchestrator.config import load
    cfg = load(REPO / CONFIG)
    cfg.archive = str(archive)
    cfg.stop.max_trials = max_trials
    return cfg


def create(archive: Path) -> None:
    """The archive the driver would create (its seed, its members), with the seed's noise runs already judged."""
    from orchestrator.archive import Archive, member_names
    from orchestrator.config import seed_source
    from orchestrator.driver import save_config
    cfg = config(archive, 0)
    with Archive.create(archive, seed_source(cfg), member_names(cfg.population.size), "seed") as arch:
        head = arch.heads()["m0"]
        for k in range(cfg.selection.noise_seeds):
            arch.add_pending("m0", head, arch.source(head), f"baseline run {k + 1}", f"t{k:05d}", "baseline")
            arch.finish(f"t{k:05d}", {"status": "ok", "val_bpb": 1.0 + 0.01 * k, "verdict": "baseline",
                                      "finished_at": time.time(), "device": "Fake GPU", "budget_seconds": 300.0,
                                      "runs": 1, "run_scores": json.dumps([1.0 + 0.01 * k]), "startup_seconds": 20.0})
    save_config(cfg, archive)


def fill(archive: Path, target: int, rng: random.Random) -> list[float]:
    """Trials written through the archive's real write path (add_pending + finish, as the driver calls them)
    until the archive holds `target`; returns the seconds of each record."""
    from orchestrator.archive import Archive, is_archive
    if not is_archive(archive):
        create(archive)
    seconds = []
    with Archive(archive) as arch:
        done = len(arch.trial_records())
        members = arch.members()
        first = int(arch.new_trial_id("f")[1:])          # fill trials are f<number>, the driver's t<number>
        for n in range(done, target):
            member = members[n % len(members)]
            head = arch.heads()[member]
            source = arch.source(head) + f"\n# fill {n}\n"
            start = time.perf_counter()
            trial_id = f"f{first + n - done:06d}"
            arch.add_pending(member, head, source, f"fill {n}", trial_id, "mutate")
            promote = rng.random() < 0.02
            arch.finish(trial_id, {"status": "ok", "val_bpb": rng.gauss(1.0, 0.02), "verdict":
                                   "promote" if promote else "discard", "finished_at": time.time(),
                                   "device": "Fake GPU", "budget_seconds": 300.0, "runs": 1,
                                   "run_scores": "[1.0]"}, promote=promote)
            seconds.append(time.perf_counter() - start)
    return seconds


def driver_window(archive: Path, trials: int) -> dict:
    """Resume the archive with the real driver, then run `trials` more through its loop with fake actors."""
    from orchestrator.archive import Archive, is_archive
    from orchestrator.live import LiveBoard
    before = 0
    if is_archive(archive):
        with Archive(archive, writer=False) as arch:
            before = arch.ledger_size()
    driver = bench_driver(config(archive, 0))
    start = time.perf_counter()
    driver.open_archive()
    opened = time.perf_counter()
    driver.rebuild()
    resumed = time.perf_counter()
    driver.cfg.stop.max_trials = driver.finished + trials
    ray = FakeRay()
    driver.board = LiveBoard(io.StringIO())
    driver.start_actors(ray)
    driver.record_seconds.clear()
    driver.snapshot_seconds.clear()
    loop_start = time.perf_counter()
    driver.loop(ray)
    snapshots = sum(driver.snapshot_seconds)            # the one at the loop's end; every SNAPSHOT_EVERY records
    loop = time.perf_counter() - loop_start - snapshots
    finished = len(driver.record_seconds)
    driver.archive.close()
    return {"open": opened - start, "resume": resumed - start, "loop_per_trial": loop / max(1, finished),
            "snapshot": snapshots / max(1, len(driver.snapshot_seconds)),
            "record_in_loop": sum(driver.record_seconds) / max(1, finished), "window": finished, "before": before}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def disk(archive: Path) -> tuple[int, int]:
    size, inodes = 0, 0
    for root, dirs, files in os.walk(archive):
        inodes += len(dirs) + len(files)
        size += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    return size, inodes


def point(archive: Path, size: int, rng: random.Random) -> dict:
    """Fill to size - 2 WINDOW, run WINDOW through the driver twice (the first replays the filled trials, which
    no journal line or state snapshot holds; the second resumes from the snapshot the first left at its end),
    then read it back every way a user does."""
    import pandas as pd
    from orchestrator.archive import Archive
    from orchestrator.report import write_report
    from orchestrator.status import status_text
    filled = fill(archive, max(0, size - 2 * WINDOW), rng)
    first = driver_window(archive, WINDOW)
    window = driver_window(archive, WINDOW)
    with Archive(archive, writer=False) as arch:
        n = arch.ledger_size()
    cli = [sys.executable, "-m", "orchestrator.cli", "status", str(archive)]
    status_cli = timed(lambda: subprocess.run(cli, capture_output=True, check=True))
    tail = filled[-500:] if filled else []
    size_bytes, inodes = disk(archive)
    return {"n": n, "record_fill": sum(tail) / len(tail) if tail else None, "resume_fill": first["resume"],
            **window,
            "status_fn": timed(lambda: status_text(archive)), "status_cli": status_cli,
            "report": timed(lambda: write_report(archive)),
            "read_parquet": timed(lambda: pd.read_parquet(archive / "ledger")),
            "bytes_per_trial": size_bytes / n, "inodes_per_trial": inodes / n}


def existing_point(archive: Path) -> dict:
    """point() on an archive that is already filled: 2 WINDOW more trials through the driver, then the reads."""
    from orchestrator.archive import Archive
    with Archive(archive, writer=False) as arch:
        held = arch.ledger_size()
    return point(archive, held + 2 * WINDOW, random.Random(5))


def run_sizes(sizes: list[int], workdir: Path) -> list[dict]:
    rng = random.Random(0)
    archive = workdir / "pop"
    out = []
    for size in sizes:
        out.append(point(archive, size, rng))
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


ROWS = [("trials in the archive", "n", "{:.0f}"),
        ("record one trial, fill (add_pending + finish), ms", "record_fill", "{:.1f}", 1000),
        ("record one trial in the driver loop (finish), ms", "record_in_loop", "{:.1f}", 1000),
        ("driver loop per finished trial (state snapshots aside), ms", "loop_per_trial", "{:.1f}", 1000),
        ("write one state snapshot (every 1,000 records and at the end), s", "snapshot", "{:.2f}"),
        ("open_archive, s", "open", "{:.2f}"),
        ("resume after a fill (replays the filled trials), s", "resume_fill", "{:.2f}"),
        ("resume (open_archive + rebuild; from the state snapshot), s", "resume", "{:.2f}"),
        ("`popsearch status` (new process), s", "status_cli", "{:.2f}"),
        ("status_text() in process, s", "status_fn", "{:.2f}"),
        ("write_report(), s", "report", "{:.2f}"),
        ("pandas.read_parquet(ledger/), s", "read_parquet", "{:.3f}"),
        ("disk bytes per trial", "bytes_per_trial", "{:.0f}"),
        ("inodes per trial", "inodes_per_trial", "{:.3f}")]


def table(columns: dict[str, list[dict]]) -> str:
    heads = [f"{label} {p['n']:,}" for label, points in columns.items() for p in points]
    lines = ["| | " + " | ".join(heads) + " |", "| --- |" + " --- |" * len(heads)]
    for name, key, fmt, *scale in ROWS[1:]:
        cells = []
        for points in columns.values():
            for p in points:
                value = p.get(key)
                cells.append("-" if value is None else fmt.format(value * (scale[0] if scale else 1)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


HOW = f"""How: configs/cluster.yaml (8 members), {GPUS} fake GPU actors answering at once, no Ray. At each size the archive
is filled through Archive.add_pending + finish (as the driver calls them, but with no journal line) to size - {2 * WINDOW}; the real
Driver resumes it (open_archive + rebuild, timed: it replays the filled trials and leaves a state snapshot) and runs {WINDOW}
trials through Driver.loop; a second Driver resumes from that snapshot (timed) and runs {WINDOW} more (loop and finish() timed;
the state snapshot the loop writes at its end is timed on a row of its own, not in the loop's).
status: `python -m orchestrator.cli status` in a new process (imports included) and status_text() in process;
report: write_report(); disk: bytes and inodes of every file and folder under the archive, over the trials."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--old", help="a copy of today's tree (git archive 4fb9762) for the old column")
    parser.add_argument("--old-sizes", default="1000", help="sizes for the old layout (it is slow)")
    parser.add_argument("--at", help="measure one point on this existing archive (filled earlier, e.g. by a run "
                                     "of this script stopped part-way), filling nothing")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.at:
        print(table({"existing": [existing_point(Path(args.at))]}))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="popsearch-scale-") as tmp:
        if args.json:
            print(json.dumps(run_sizes(sizes, Path(tmp))))
            return 0
        columns = {"new": run_sizes(sizes, Path(tmp) / "new")}
    if args.old:
        env = {**os.environ, "PYTHONPATH": str(Path(args.old).resolve())}
        done = subprocess.run([sys.executable, str(Path(args.old) / "bench" / "scale.py"), "--json", "--sizes",
                               args.old_sizes], env=env, capture_output=True, text=True, check=True,
                              cwd=args.old)
        columns = {"old": json.loads(done.stdout.strip().splitlines()[-1]), **columns}
    print(table(columns))
    print()
    print(HOW)
    return 0


if __name__ == "__main__":
    sys.exit(main())
