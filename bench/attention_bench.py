"""GPU bench for issue 12: graph breaks of the baseline's compiled forward, and the Muon step per matrix vs stacked.

`python bench/attention_bench.py breaks` counts with whatever trainer/ is first on sys.path (the shipped tree or
the new one); `python bench/attention_bench.py muon OLD_TRAIN_PY` times OLD_TRAIN_PY's Muon against this tree's."""
from __future__ import annotations

import importlib.util
import json
import sys
import time

import torch

VOCAB = 8192
BATCH = 32


def load(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def graph_breaks() -> dict:
    import trainer
    from trainer import attention
    train = load(f"{trainer.__path__[0]}/train.py", "bench_train")
    model = train.GPT(VOCAB).cuda()
    if hasattr(attention, "prepare_attention"):
        attention.prepare_attention(train.SEQ_LEN, {(w, 0) for w in model.windows}, "cuda")
    idx = torch.randint(0, VOCAB, (BATCH, train.SEQ_LEN), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(model)(idx, idx)
    return {"tree": trainer.__path__[0], "backend": attention.backend_name("cuda"),
            "graphs": explained.graph_count, "graph_breaks": explained.graph_break_count}


def muon_step_ms(train, steps: int = 30) -> float:
    torch.manual_seed(0)
    model = train.GPT(VOCAB).cuda()
    orthogonalize = torch.compile(train.newton_schulz, dynamic=False)
    _, muon = train.make_optimizers(model, orthogonalize)
    for p in muon.param_groups[0]["params"]:
        p.grad = torch.randn_like(p) * 1e-3
    for _ in range(3):                                  # compile every shape first
        muon.step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        muon.step()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / steps


def main() -> None:
    if sys.argv[1] == "breaks":
        print(json.dumps(graph_breaks()))
    else:
        import trainer
        old = load(sys.argv[2], "old_train")
        new = load(f"{trainer.__path__[0]}/train.py", "new_train")
        print(json.dumps({"muon_ms_per_matrix": round(muon_step_ms(old), 2),
                          "muon_ms_stacked": round(muon_step_ms(new), 2)}))


if __name__ == "__main__":
    main()
