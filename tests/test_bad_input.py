"""Every bad input of the real `popsearch` command ends in one line on stderr and exit 2, before anything is
created or started: folders that are not archives, missing files, a locked archive, a broken seed, a missing corpus."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.archive import Archive, ArchiveLocked

POPSEARCH = [sys.executable, "-m", "orchestrator.cli"]
SEED = Path(__file__).resolve().parents[1] / "trainer" / "train.py"


def run_cli(args, cwd=None, timeout=120):
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(POPSEARCH + args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def one_line(proc) -> str:
    """The single stderr line of a refused command (exit 2, nothing on stdout, no traceback)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("popsearch: "), proc.stderr
    return lines[0]


def config(tmp_path: Path, cache_root: Path, **sections) -> Path:
    cfg = {"archive": str(tmp_path / "archive"),
           "data": {"corpus": "builtin", "vocab_size": 512, "cache_dir": str(cache_root)},
           "resources": {"device": "cpu"}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("command", ["status", "report", "repair"])
def test_a_folder_that_is_not_an_archive(tmp_path, command):
    plain = tmp_path / "notes"
    plain.mkdir()
    (plain / "a.txt").write_text("hello")
    line = one_line(run_cli([command, str(plain)]))
    assert str(plain) in line and "not a popsearch archive" in line
    assert sorted(p.name for p in plain.iterdir()) == ["a.txt"]
    line = one_line(run_cli([command, str(tmp_path / "missing")]))
    assert "no such archive folder" in line and not (tmp_path / "missing").exists()


def test_trial_on_a_missing_file(tmp_path):
    line = one_line(run_cli(["trial", str(tmp_path / "nope.py")]))
    assert line == f"popsearch: {tmp_path / 'nope.py'}: no such file"


def test_an_empty_config_file(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    line = one_line(run_cli(["run", str(empty)], cwd=tmp_path))
    assert str(empty) in line and "empty" in line
    assert hidden_leftovers(tmp_path) == [] and not (tmp_path / "runs").exists()


def test_a_second_driver_on_the_same_archive(tmp_path, cache_root):
    cfg = config(tmp_path, cache_root)
    with Archive.create(tmp_path / "archive", SEED.read_text(), ["m0"]):       # this process is the driver
        line = one_line(run_cli(["run", str(cfg)]))
    assert "in use by another popsearch driver" in line and f"pid {os.getpid()}" in line


def test_a_seed_that_does_not_parse(tmp_path, cache_root):
    seed = tmp_path / "seed.py"
    seed.write_text(SEED.read_text().replace("def main(", "def main((", 1))
    lineno = 1 + seed.read_text().split("def main((")[0].count("\n")
    cfg = config(tmp_path, cache_root, population={"seed_train_py": str(seed), "overrides": {}})
    line = one_line(run_cli(["run", str(cfg)]))
    assert f"{seed}:{lineno}: the seed train.py does not parse" in line
    assert not (tmp_path / "archive").exists() and hidden_leftovers(tmp_path) == []


def test_a_missing_local_corpus(tmp_path, cache_root):
    cfg = config(tmp_path, cache_root, data={"corpus": f"local:{tmp_path / 'corpus'}"})
    line = one_line(run_cli(["run", str(cfg)]))
    assert f"{cfg}:" in line and "key 'data.corpus'" in line and "no such folder" in line
    assert not (tmp_path / "archive").exists()
    line = one_line(run_cli(["prepare", "--corpus", f"local:{tmp_path / 'corpus'}"]))
    assert "key 'data.corpus'" in line and f"{tmp_path / 'corpus'}: no such folder" in line


def test_a_negative_max_trials_on_the_command_line(tmp_path, cache_root):
    line = one_line(run_cli(["run", str(config(tmp_path, cache_root)), "--max-trials", "-3"]))
    assert "key 'stop.max_trials' must be >= 0" in line and not (tmp_path / "archive").exists()


def _create(path: str, barrier, results) -> None:
    barrier.wait()
    try:
        Archive.create(path, SEED.read_text(), ["m0", "m1"]).close()
        results.put("created")
    except ArchiveLocked as exc:
        results.put(f"locked: {exc}")


def test_two_drivers_create_one_archive_at_the_same_instant(tmp_path):
    """Real processes released by one barrier: one creates the archive, the other is told and leaves nothing."""
    ctx = multiprocessing.get_context("fork")
    for attempt in range(2):
        target = tmp_path / f"archive{attempt}"
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_create, args=(str(target), barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        outcomes = sorted(results.get(timeout=5) for _ in procs)
        assert outcomes[0] == "created" and outcomes[1].startswith("locked: "), outcomes
        assert "another popsearch driver" in outcomes[1]
        assert hidden_leftovers(tmp_path) == []
        with Archive.open(target, writer=False) as archive:
            assert sorted(archive.heads()) == ["m0", "m1"]


def archive_state(folder: Path) -> dict:
    """Every file under the archive (git objects and refs included) with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def saved_archive(folder: Path, cfg) -> None:
    """An archive as a driver leaves it: the seed and config.yaml (the config it ran with)."""
    with Archive.create(folder, SEED.read_text(), ["m0", "m1", "m2", "m3"]):
        pass
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def test_a_changed_config_on_an_existing_archive_is_refused_with_its_differences(tmp_path, cache_root):
    from orchestrator.config import load
    first = config(tmp_path, cache_root, budget={"seconds": 8.0}, population={"size": 4})
    saved_archive(tmp_path / "archive", load(first))
    before = archive_state(tmp_path / "archive")
    second = config(tmp_path, cache_root, budget={"seconds": 4.0}, population={"size": 6}, stop={"max_trials": 9})
    line = one_line(run_cli(["run", str(second)]))
    assert f"{second} differs from {tmp_path / 'archive' / 'config.yaml'}: " in line
    assert "budget.seconds: 8.0 -> 4.0, population.size: 4 -> 6;" in line and "max_trials" not in line
    assert "a new score segment would start (budget.seconds)" in line
    assert "read only when an archive is created, no effect here: population.size." in line
    assert "--accept-config-change" in line and f"popsearch resume {tmp_path / 'archive'}" in line
    assert archive_state(tmp_path / "archive") == before and hidden_leftovers(tmp_path) == []


def test_the_builtin_demo_on_an_archive_made_by_another_config_is_refused(tmp_path, cache_root):
    from orchestrator.config import builtin_demo
    other = builtin_demo()
    other.selection.promote_at = 0.1
    saved_archive(tmp_path / "runs" / "demo", other)
    before = archive_state(tmp_path / "runs" / "demo")
    line = one_line(run_cli(["run"], cwd=tmp_path))
    assert "<built-in demo> differs from" in line and "selection.promote_at: 0.1 -> 0.55." in line
    assert "score segment" not in line                              # the rule changes, not what a score means
    assert archive_state(tmp_path / "runs" / "demo") == before
