"""The baseline train.py: importable without training, a causal windowed model, Muon, and real CPU runs.

Runs use the tiny overrides (conftest) on the prepared builtin corpus; each run is a real subprocess."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.constants import read_constants

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ["DEPTH", "MODEL_DIM", "N_HEADS", "SEQ_LEN", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE",
            "WINDOW_PATTERN", "SHORT_WINDOW", "COMPILE", "MATRIX_LR", "EMBED_LR", "UNEMBED_LR",
            "WARMUP_FRACTION", "COOLDOWN_FRACTION", "WEIGHT_DECAY", "LOGIT_SOFTCAP", "SEED_OFFSET"]


def load_module(path: Path, name: str = "candidate_train"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny(tiny_train_py, data_spec, monkeypatch):
    monkeypatch.setenv("POPSEARCH_TRAIN_DIR", str(data_spec.train_dir))
    torch.set_num_threads(1)
    return load_module(tiny_train_py)


def randomized(model, seed=0):
    """Zero-initialized projections would hide mixing across positions; give every weight some value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def test_import_trains_nothing_and_exposes_constants(baseline_source, tiny_overrides, monkeypatch, capsys):
    monkeypatch.delenv("POPSEARCH_TRAIN_DIR", raising=False)     # importing must not touch the data
    module = load_module(REPO / "trainer" / "train.py")
    assert capsys.readouterr().out == ""
    assert callable(module.build_model)
    constants = read_constants(baseline_source)
    for name in REQUIRED + list(tiny_overrides):
        assert name in constants, name
        assert getattr(module, name) == constants[name]


def test_logits_shape_up_to_four_times_seq_len(tiny):
    model = tiny.build_model()
    vocab = tiny.data_info()["vocab_size"]
    for T in (tiny.SEQ_LEN, 2 * tiny.SEQ_LEN, 4 * tiny.SEQ_LEN):
        logits = model(torch.randint(vocab, (2, T)))
        assert logits.shape == (2, T, vocab) and logits.dtype == torch.float32
        assert logits.abs().max() <= tiny.LOGIT_SOFTCAP
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.randint(vocab, (1, 4 * tiny.SEQ_LEN + 1)))


def test_causal_and_windowed(tiny):
    """Later tokens never move earlier logits; with DEPTH 2 'S' layers, position i sees back 2*SHORT_WINDOW."""
    assert tiny.layer_windows(tiny.DEPTH, tiny.WINDOW_PATTERN, tiny.SHORT_WINDOW, tiny.SEQ_LEN) == [32, 32]
    model = randomized(tiny.build_model())
    vocab = tiny.data_info()["vocab_size"]
    T, cut = 2 * tiny.SEQ_LEN, 50
    idx = torch.randint(vocab, (2, T), generator=torch.Generator().manual_seed(1))
    later = idx.clone()
    later[:, cut:] = (idx[:, cut:] + 1) % vocab
    first = idx.clone()
    first[:, 0] = (idx[:, 0] + 1) % vocab
    with torch.no_grad():
        base, moved_late, moved_first = model(idx), model(later), model(first)
    torch.testing.assert_close(base[:, :cut], moved_late[:, :cut], atol=1e-5, rtol=0)
    assert not torch.allclose(base[:, cut:], moved_late[:, cut:])
    reach = 2 * tiny.SHORT_WINDOW
    assert not torch.allclose(base[:, 1:reach], moved_first[:, 1:reach])
    torch.testing.assert_close(base[:, reach + 1:], moved_first[:, reach + 1:], atol=1e-5, rtol=0)


def test_newton_schulz_is_near_orthogonal(tiny):
    """Random rectangular (well-conditioned) matrices come out with every singular value near 1."""
    g = torch.Generator().manual_seed(0)
    for shape in [(64, 128), (128, 64), (64, 256)]:
        X = tiny.newton_schulz(torch.randn(*shape, generator=g))
        singular = torch.linalg.svdvals(X)
        assert X.shape == shape
        assert singular.min() > 0.5 and singular.max() < 1.3, (shape, singular.min(), singular.max())


def test_optimizers_split_and_schedule(tiny):
    model = tiny.build_model()
    adam, muon = tiny.make_optimizers(model)
    muon_ids = {id(p) for p in muon.param_groups[0]["params"]}
    adam_ids = {id(p) for g in adam.param_groups for p in g["params"]}
    assert muon_ids.isdisjoint(adam_ids) and muon_ids | adam_ids == {id(p) for p in model.parameters()}
    assert id(model.embed.weight) in adam_ids and id(model.lm_head.weight) in adam_ids
    assert all(p.ndim == 2 for p in muon.param_groups[0]["params"])
    assert tiny.lr_multiplier(0.0) < 0.1
    assert tiny.lr_multiplier(0.3) == 1.0
    assert tiny.lr_multiplier(1.0) == pytest.approx(tiny.FINAL_LR_FRACTION)
    assert tiny.lr_multiplier(0.8) < 1.0


def run_train(folder: Path, data_spec, extra_env: dict) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`python train.py` in folder with an events pipe; returns the process and its events."""
    read_fd, write_fd = os.pipe()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPSEARCH_")}
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(PYTHONPATH=pythonpath, POPSEARCH_TRAIN_DIR=str(data_spec.train_dir), POPSEARCH_DEVICE="cpu",
               POPSEARCH_THREADS="1", POPSEARCH_WEIGHTS=str(folder / "weights.pt"),
               POPSEARCH_EVENTS_FD=str(write_fd), OMP_NUM_THREADS="1", **extra_env)
    try:
        proc = subprocess.Popen([sys.executable, "train.py"], cwd=folder, env=env, pass_fds=(write_fd,),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd) as events:
        lines = events.read().splitlines()
    out, _ = proc.communicate(timeout=120)
    proc.stdout_text = out
    return proc, [json.loads(line) for line in lines]


def test_time_budget_run_learns_and_hands_off(tiny_train_py, data_spec, tiny):
    proc, events = run_train(tiny_train_py.parent, data_spec, {"POPSEARCH_BUDGET_SECONDS": "4"})
    assert proc.returncode == 0, proc.stdout_text
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "finish" and "progress" in kinds
    progress = [e for e in events if e["event"] == "progress"]
    finish = events[-1]
    step_seconds = finish["train_seconds"] / finish["steps"]
    assert progress[-1]["step"] == finish["steps"]            # the last step is reported, and the run used its
    assert progress[-1]["progress"] >= 1.0 - 2 * step_seconds / 4.0      # budget to within a step or so
    assert finish["steps"] > 5 and finish["tokens"] == finish["steps"] * tiny.TOTAL_BATCH_SIZE
    assert finish["backend"] == "sdpa"
    assert finish["loss"] < progress[0]["loss"] - 0.5
    assert "step" in proc.stdout_text and "loss" in proc.stdout_text
    model = tiny.build_model()
    model.load_state_dict(torch.load(tiny_train_py.parent / "weights.pt"))


def test_flops_budget_stops_after_expected_tokens(tiny_train_py, data_spec, tiny):
    model = tiny.build_model()
    n_params = sum(p.numel() for p in model.parameters())
    steps = 6
    budget = model.flops_per_token() * tiny.TOTAL_BATCH_SIZE * steps
    proc, events = run_train(tiny_train_py.parent, data_spec,
                             {"POPSEARCH_BUDGET_KIND": "flops", "POPSEARCH_BUDGET_FLOPS": str(budget)})
    assert proc.returncode == 0, proc.stdout_text
    assert events[0]["params"] == n_params
    assert events[-1]["steps"] == steps and events[-1]["tokens"] == steps * tiny.TOTAL_BATCH_SIZE
