"""The judge's evaluation: val_bpb against a brute-force reference, hand-off, causality probe, and every way a
candidate train.py (tests/candidates_judge/) can crash, cheat or hang inside the judge."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from judge.causality import probe
from judge.evaluate import evaluate, val_rows
from judge.run_judge import _read_result, run_judge
from judge.handoff import hand_off
from judge.spec import ENV_TRAIN_DIR, ENV_WEIGHTS, JudgeConfig

CANDIDATES = Path(__file__).resolve().parent / "candidates_judge"
VOCAB = 40
BOS = VOCAB - 1
ZERO_BYTE_TOKENS = (BOS, 3)          # special tokens: excluded from nats and bytes
CFG = JudgeConfig(seq_len=16, eval_tokens=100, eval_batch=3, probe_positions=3, timeout_seconds=60)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_split(folder: Path, docs: list) -> None:
    folder.mkdir(parents=True)
    lengths = [len(d) + 1 for d in docs]
    tokens = np.concatenate([[BOS, *d] for d in docs]).astype("<u2")
    tokens.tofile(folder / "tokens.bin")
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    np.save(folder / "offsets.npy", offsets)
    meta = {"vocab_size": VOCAB, "bos_id": BOS, "token_dtype": "uint16", "n_tokens": int(offsets[-1]),
            "n_docs": len(docs)}
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A tiny DATA_DIR in the contracts layout: train/, val/ and tokenizer/token_bytes.npy."""
    root = tmp_path_factory.mktemp("judge-data")
    rng = np.random.default_rng(0)
    for split, n_docs in (("train", 10), ("val", 30)):
        _write_split(root / split, [rng.integers(0, VOCAB - 1, rng.integers(5, 40)).tolist()
                                    for _ in range(n_docs)])
    table = rng.integers(1, 5, VOCAB).astype(np.int32)
    table[list(ZERO_BYTE_TOKENS)] = 0
    (root / "tokenizer").mkdir()
    np.save(root / "tokenizer" / "token_bytes.npy", table)
    return root


def load_candidate(name: str):
    """Import a benign test candidate here (to build its weights or a reference)."""
    spec = importlib.util.spec_from_file_location(f"test_cand_{uuid.uuid4().hex}", CANDIDATES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def weights_of(name: str, data_dir: Path, tmp_path: Path) -> Path:
    torch.manual_seed(0)
    os.environ[ENV_TRAIN_DIR] = str(data_dir / "train")
    try:
        model = load_candidate(name).build_model()
    finally:
        os.environ.pop(ENV_TRAIN_DIR, None)
    return hand_off(model, tmp_path / f"{name}.pt")


def embedding_weights(tmp_path: Path, prefix: str = "", width: int = VOCAB) -> Path:
    """Weights of the candidates whose model is an embedding (they must not be imported here: they cheat)."""
    state = {f"{prefix}weight": torch.randn(VOCAB, width)}
    path = tmp_path / "emb.pt"
    torch.save(state, path)
    return path


def judge(name: str, weights: Path, data_dir: Path) -> dict:
    return evaluate(CANDIDATES / f"{name}.py", weights, data_dir, CFG)


# ------------------------------------------------------------------------------------------ the metric
def brute_force_bpb(model, data_dir: Path) -> tuple[float, int, int]:
    """nats, bytes, tokens by a plain Python loop: rows of T+1 tokens cut from the val stream, softmax by hand."""
    stream = np.fromfile(data_dir / "val" / "tokens.bin", dtype="<u2")
    table = np.load(data_dir / "tokenizer" / "token_bytes.npy")
    T = CFG.seq_len
    nats, nbytes, ntok = 0.0, 0, 0
    for r in range(math.ceil(CFG.eval_tokens / T)):
        row = [int(t) for t in stream[r * (T + 1):(r + 1) * (T + 1)]]
        with torch.no_grad():
            logits = model(torch.tensor([row[:-1]]))[0].double().tolist()
        for t in range(T):
            target = row[t + 1]
            if table[target] == 0:
                continue
            z = logits[t]
            top = max(z)
            log_denominator = math.log(sum(math.exp(v - top) for v in z)) + top
            nats += log_denominator - z[target]
            nbytes += int(table[target])
            ntok += 1
    return nats, nbytes, ntok


def test_val_bpb_matches_brute_force_reference(data_dir, tmp_path):
    weights = weights_of("causal_ok", data_dir, tmp_path)
    result = judge("causal_ok", weights, data_dir)
    assert result["status"] == "ok", result
    assert result["causal"] is True and result["reason"] == ""
    model = load_candidate("causal_ok").PrefixMean(VOCAB)
    model.load_state_dict(torch.load(weights))
    model.eval()
    nats, nbytes, ntok = brute_force_bpb(model, data_dir)
    rows = math.ceil(CFG.eval_tokens / CFG.seq_len)
    assert ntok < rows * CFG.seq_len                     # zero-byte targets really were left out
    assert (result["bytes"], result["tokens"]) == (nbytes, ntok)
    assert math.isclose(result["nats"], nats, rel_tol=1e-5)
    assert math.isclose(result["val_bpb"], nats / math.log(2) / nbytes, rel_tol=1e-5)
    assert math.isclose(result["val_loss"], nats / ntok, rel_tol=1e-5)
    assert result["params"] == sum(p.numel() for p in model.parameters())


def test_one_layer_attention_is_ok_and_causal(data_dir, tmp_path):
    result = judge("causal_attention", weights_of("causal_attention", data_dir, tmp_path), data_dir)
    assert result["status"] == "ok" and result["causal"] is True, result
    assert result["probe"].startswith("causal at cut points")


def test_val_rows_are_fixed_consecutive_chunks(data_dir):
    rows = val_rows(data_dir, 16, 100)
    stream = np.fromfile(data_dir / "val" / "tokens.bin", dtype="<u2")
    assert rows.shape == (7, 17)
    assert np.array_equal(rows.reshape(-1), stream[:7 * 17])


def test_too_little_validation_data_is_a_judge_problem(data_dir, tmp_path):
    weights = weights_of("causal_ok", data_dir, tmp_path)
    cfg = JudgeConfig(seq_len=16, eval_tokens=10_000)
    result = evaluate(CANDIDATES / "causal_ok.py", weights, data_dir, cfg)
    assert result["status"] == "infra" and "eval_tokens" in result["reason"]


def test_evaluate_leaves_no_trace_in_this_process(data_dir, tmp_path):
    weights = weights_of("causal_ok", data_dir, tmp_path)
    modules = set(sys_modules())
    assert judge("causal_ok", weights, data_dir)["status"] == "ok"
    assert ENV_TRAIN_DIR not in os.environ
    assert not [m for m in set(sys_modules()) - modules if m.startswith("popsearch_candidate_")]


def sys_modules():
    import sys
    return sys.modules


# ------------------------------------------------------------------------------------------ hand-off
def test_hand_off_strips_compile_prefix_and_moves_to_cpu(tmp_path, monkeypatch):
    class Wrapped(torch.nn.Module):           # what torch.compile's OptimizedModule looks like to state_dict()
        def __init__(self):
            super().__init__()
            self._orig_mod = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2).to(torch.bfloat16))

    model = Wrapped()
    monkeypatch.setenv(ENV_WEIGHTS, str(tmp_path / "sub" / "w.pt"))
    path = hand_off(model)
    state = torch.load(path, weights_only=True)
    assert sorted(state) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    assert state["1.weight"].dtype == torch.bfloat16 and state["0.weight"].device.type == "cpu"
    assert torch.equal(state["0.weight"], model._orig_mod[0].weight.detach())
    assert [p.name for p in path.parent.iterdir()] == ["w.pt"]          # no temp file left behind


def test_hand_off_without_a_path_says_so(monkeypatch):
    monkeypatch.delenv(ENV_WEIGHTS, raising=False)
    with pytest.raises(RuntimeError, match=ENV_WEIGHTS):
        hand_off(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------ causality probe
def test_probe_passes_a_causal_model_and_fails_a_lookahead(data_dir):
    torch.manual_seed(0)
    rows = torch.from_numpy(val_rows(data_dir, 16, 48)[:, :-1])
    causal = load_candidate("causal_ok").PrefixMean(VOCAB).eval()
    ok, reason = probe(causal, rows, 4, seed=1)
    assert ok, reason
    peek = load_candidate("lookahead").PeekNext(VOCAB).eval()
    for t in (0, 7, 14):
        ok, reason = probe(peek, rows, [t], seed=1)
        assert not ok and f"after position {t}" in reason


def test_probe_catches_a_faint_lookahead_in_float32(data_dir):
    class Faint(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(VOCAB, VOCAB)

        def forward(self, idx):
            x = self.emb(idx)
            return x + 1e-3 * torch.nn.functional.pad(x[:, 1:], (0, 0, 0, 1))

    rows = torch.from_numpy(val_rows(data_dir, 16, 48)[:, :-1])
    ok, reason = probe(Faint().eval(), rows, 3, seed=2)
    assert not ok and "looks ahead" in reason


def test_probe_fails_a_nondeterministic_model(data_dir):
    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(VOCAB, VOCAB)

        def forward(self, idx):
            return self.emb(idx) + 0.1 * torch.randn(*idx.shape, VOCAB)

    rows = torch.from_numpy(val_rows(data_dir, 16, 48)[:, :-1])
    ok, reason = probe(Noisy().eval(), rows, 2, seed=0)
    assert not ok and "not deterministic" in reason


# ------------------------------------------------------------------------------------------ bad candidates
def test_lookahead_candidate_is_invalid(data_dir, tmp_path):
    result = judge("lookahead", weights_of("lookahead", data_dir, tmp_path), data_dir)
    assert result["status"] == "invalid" and "looks ahead" in result["reason"]
    assert result["causal"] is False and result["val_bpb"] is None


@pytest.mark.parametrize("name, width, words", [
    ("wrong_shape", VOCAB - 1, "shape"),
    ("nan_logits", VOCAB, "non-finite"),
    ("subclass_logits", VOCAB, "Sneaky"),
])
def test_bad_logits_are_invalid(data_dir, tmp_path, name, width, words):
    result = judge(name, embedding_weights(tmp_path, "emb.", width), data_dir)
    assert result["status"] == "invalid" and words in result["reason"], result


def test_patching_tensor_sum_is_invalid_and_undone(data_dir, tmp_path):
    result = judge("patch_tensor_sum", embedding_weights(tmp_path), data_dir)
    assert result["status"] == "invalid" and "monkeypatched torch.Tensor.sum" in result["reason"], result
    assert "sum" not in vars(torch.Tensor) and float(torch.ones(3).sum()) == 3.0


def test_torch_function_mode_is_invalid_and_popped(data_dir, tmp_path):
    result = judge("function_mode", embedding_weights(tmp_path), data_dir)
    assert result["status"] == "invalid" and "torch function mode" in result["reason"], result
    assert torch._C._len_torch_function_stack() == 0


def test_weights_that_do_not_match_are_a_crash(data_dir, tmp_path):
    weights = weights_of("causal_ok", data_dir, tmp_path)
    state = torch.load(weights)
    state.pop("head.bias")
    torch.save(state, weights)
    result = judge("causal_ok", weights, data_dir)
    assert result["status"] == "crash" and "head.bias" in result["reason"], result


def test_missing_weights_are_a_crash(data_dir, tmp_path):
    result = judge("causal_ok", tmp_path / "never-handed-off.pt", data_dir)
    assert result["status"] == "crash" and "never-handed-off.pt" in result["reason"]


def test_import_error_is_a_crash_with_its_line(data_dir, tmp_path):
    result = judge("import_error", embedding_weights(tmp_path), data_dir)
    assert result["status"] == "crash"
    assert "import_error.py:5" in result["reason"] and "broken candidate" in result["reason"]


# ------------------------------------------------------------------------------------------ own process
def test_run_judge_agrees_with_in_process_evaluate(data_dir, tmp_path):
    weights = weights_of("causal_ok", data_dir, tmp_path)
    inside = judge("causal_ok", weights, data_dir)
    outside = run_judge(CANDIDATES / "causal_ok.py", weights, data_dir, CFG, "cpu", threads=1)
    assert outside["status"] == "ok", outside
    assert math.isclose(outside["val_bpb"], inside["val_bpb"], rel_tol=1e-6)
    assert outside["causal"] is True and outside["seconds"] > 0


def test_run_judge_patched_log_softmax_is_invalid(data_dir, tmp_path):
    result = run_judge(CANDIDATES / "patch_log_softmax.py", embedding_weights(tmp_path), data_dir, CFG, threads=1)
    assert result["status"] == "invalid" and "log_softmax" in result["reason"], result


def test_run_judge_forged_result_file_is_invalid(data_dir, tmp_path):
    result = run_judge(CANDIDATES / "forge_result.py", embedding_weights(tmp_path), data_dir, CFG, threads=1)
    assert result["status"] == "invalid" and "nonce" in result["reason"], result
    assert result["val_bpb"] is None


def test_run_judge_kills_a_hanging_candidate(data_dir, tmp_path):
    result = run_judge(CANDIDATES / "sleep_forever.py", embedding_weights(tmp_path), data_dir, CFG,
                       timeout=3, threads=1)
    assert result["status"] == "timeout" and "3 s" in result["reason"]


@pytest.mark.parametrize("name", ["read_val", "read_val_quietly"])
def test_run_judge_sandbox_denies_reading_validation_data(data_dir, tmp_path, name):
    result = run_judge(CANDIDATES / f"{name}.py", embedding_weights(tmp_path), data_dir, CFG, threads=1)
    assert result["status"] == "invalid" and "val/tokens.bin" in result["reason"], result
    assert result["sandboxed"] is True


def test_run_judge_overridden_kernel_is_invalid(data_dir, tmp_path):
    result = run_judge(CANDIDATES / "override_kernel.py", embedding_weights(tmp_path), data_dir, CFG, threads=1)
    assert result["status"] == "invalid" and "kernel registrations" in result["reason"], result


def test_garbled_or_missing_result_is_a_crash(tmp_path):
    out = tmp_path / "result.json"
    assert _read_result(out, "n", 1, "Traceback: boom")["reason"].endswith("boom")
    out.write_text("{not json")
    result = _read_result(out, "n", 0, "tail")
    assert result["status"] == "crash" and "not valid JSON" in result["reason"]
    out.write_text(json.dumps({"status": "ok", "val_bpb": 1.0, "nonce": "n"}))
    assert _read_result(out, "n", 0, "")["val_bpb"] == 1.0
