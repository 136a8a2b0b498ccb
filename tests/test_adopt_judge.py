"""The judge on adopted scripts (tests/candidates_adopt/): it runs their top-level code up to the first data
request, scores the module-level model with its own code, and catches look-ahead, patches and swallowed stops."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from judge.adopted import ADOPTED, NATIVE, protocol
from judge.evaluate import evaluate, run_until_data
from judge.handoff import hand_off
from judge.tokencache import read_meta
from test_evaluate import CANDIDATES as NATIVE_CANDIDATES, CFG, VOCAB, brute_force_bpb, data_dir  # noqa: F401

ADOPT = Path(__file__).resolve().parent / "candidates_adopt"


def built_model(name: str, data_dir: Path):
    """The model an adopted candidate builds before its first data request (the judge's own way to get it)."""
    path = ADOPT / f"{name}.py"
    code = compile(path.read_bytes(), str(path), "exec")
    module = run_until_data(path, code, CFG.seq_len, read_meta(data_dir / "train"), [])
    return module.model


def test_protocol_tells_adopted_from_native():
    assert protocol((ADOPT / "upstream_train.py").read_text()) == ADOPTED
    assert protocol((NATIVE_CANDIDATES / "causal_ok.py").read_text()) == NATIVE
    assert protocol("from prepare import TIME_BUDGET\ndef build_model():\n    pass\n") == NATIVE


def test_upstream_script_is_scored_by_the_judge(data_dir, tmp_path):
    model = built_model("upstream_train", data_dir)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    weights = hand_off(model, tmp_path / "w.pt")
    result = evaluate(ADOPT / "upstream_train.py", weights, data_dir, CFG)
    assert result["status"] == "ok" and result["causal"] is True, result
    model.eval()
    nats, nbytes, _ = brute_force_bpb(model, data_dir)
    assert math.isclose(result["val_bpb"], nats / math.log(2) / nbytes, rel_tol=1e-5)
    assert result["params"] == sum(p.numel() for p in model.parameters())


def test_compiled_model_keys_are_unwrapped(data_dir, tmp_path):
    model = built_model("upstream_train", data_dir)
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    result = evaluate(ADOPT / "upstream_train.py", tmp_path / "w.pt", data_dir, CFG)
    assert result["status"] == "ok", result


def test_lookahead_model_is_invalid(data_dir, tmp_path):
    weights = hand_off(built_model("lookahead", data_dir), tmp_path / "w.pt")
    result = evaluate(ADOPT / "lookahead.py", weights, data_dir, CFG)
    assert result["status"] == "invalid" and "looks ahead" in result["reason"], result


def test_patching_the_judge_is_invalid(data_dir, tmp_path):
    torch.save({"weight": torch.randn(VOCAB, VOCAB)}, tmp_path / "w.pt")
    result = evaluate(ADOPT / "patch_judge.py", tmp_path / "w.pt", data_dir, CFG, sandbox=False)
    assert result["status"] == "invalid" and "log_softmax" in result["reason"], result


def test_swallowing_the_stop_is_invalid(data_dir, tmp_path):
    torch.save({"weight": torch.randn(VOCAB, VOCAB)}, tmp_path / "w.pt")
    result = evaluate(ADOPT / "swallow_stop.py", tmp_path / "w.pt", data_dir, CFG)
    assert result["status"] == "invalid" and "ran on" in result["reason"], result


def test_weights_of_another_model_are_a_crash(data_dir, tmp_path):
    torch.save({"weight": torch.randn(VOCAB, VOCAB)}, tmp_path / "w.pt")
    result = evaluate(ADOPT / "upstream_train.py", tmp_path / "w.pt", data_dir, CFG)
    assert result["status"] == "crash" and "no module-level" in result["reason"], result


def test_mutator_and_brief_work_on_adopted_scripts():
    import random

    from orchestrator.config import load
    from orchestrator.proposers import mutate
    from orchestrator.proposers.base import validate_source
    from orchestrator.proposers.brief import full_brief
    from trainer.constants import read_constants

    source = (ADOPT / "upstream_train.py").read_text()
    assert validate_source(source) == (True, "")
    new, message = mutate.propose(source, random.Random(0))
    changed = {k for k, v in read_constants(new).items() if read_constants(source)[k] != v}
    assert changed and message.startswith("mutate: ") and protocol(new) == ADOPTED
    assert "adopted single-GPU script" in full_brief(load(None), source)
    assert "native protocol" in full_brief(load(None), (NATIVE_CANDIDATES / "causal_ok.py").read_text())


def test_temp_folders_made_at_top_level_land_in_the_judge_scratch(data_dir, tmp_path):
    """torch.compile on CUDA makes a temp folder while the script builds its model: under the sandboxed judge CLI
    it lands in the judge's scratch folder (allowed) instead of being refused as a write outside it."""
    from judge.run_judge import run_judge
    source = (ADOPT / "upstream_train.py").read_text()
    marker = "torch.manual_seed(42)\n"
    assert marker in source
    script = tmp_path / "train.py"
    script.write_text(source.replace(marker, "import tempfile\nMADE = tempfile.mkdtemp()\n" + marker, 1))
    weights = hand_off(built_model("upstream_train", data_dir), tmp_path / "w.pt")
    result = run_judge(script, weights, data_dir, CFG, "cpu", threads=1)
    assert result["status"] == "ok", result
