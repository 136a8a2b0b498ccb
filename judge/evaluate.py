"""The judge's evaluation of one candidate: val_bpb from the model's own logits, causality and integrity checks.

evaluate() runs in the current process; run_judge() (judge/run_judge.py) runs this CLI in a process of its own."""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import secrets
import shutil
import sys
import tempfile
import time
import types
import uuid
from pathlib import Path

import numpy as np
import torch

from judge import guard
from judge.adopted import ADOPTED, PREPARE, ModelReady, judge_prepare, matching_model, module_models, protocol
from judge.causality import probe
from judge.handoff import plain_key
from judge.integrity import CANARY_RTOL, Snapshot, canary
from judge.run_judge import empty_result
from judge.spec import ENV_TRAIN_DIR, JudgeConfig
from judge.tokencache import META_FILE, open_split, read_meta

CANDIDATE_PREFIX = "popsearch_candidate_"
TOKEN_BYTES_FILE = "token_bytes.npy"
CE_CHUNK_ELEMENTS = 1 << 27       # logits elements per log_softmax call: bounds the judge's own extra memory
REASON_CHARS = 600                # candidate error messages are cut to this length
DOWNLOAD_DIRS = ("climbmix",)     # folders of the cache root holding downloaded corpora (judge/corpus.py)


class Outcome(Exception):
    """A finished evaluation that is not ok: status (invalid | crash | infra) and reason."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


# ---------------------------------------------------------------------------------------------- data
def val_rows(data_dir, seq_len: int, eval_tokens: int) -> np.ndarray:
    """The fixed evaluation rows: the validation token stream cut into consecutive rows of seq_len + 1 tokens,
    ceil(eval_tokens / seq_len) of them (row i = stream[i*(T+1) : (i+1)*(T+1)]; inputs row[:-1], targets row[1:])."""
    if seq_len < 2 or eval_tokens < 1:
        raise Outcome("infra", f"judge config: seq_len must be >= 2 and eval_tokens >= 1 "
                               f"(got {seq_len}, {eval_tokens})")
    tokens, _, _ = _open(Path(data_dir) / "val")
    n_rows = -(-eval_tokens // seq_len)
    need = n_rows * (seq_len + 1)
    if len(tokens) < need:
        raise Outcome("infra", f"{Path(data_dir) / 'val'}: {len(tokens):,} validation tokens, but eval_tokens="
                               f"{eval_tokens} at seq_len={seq_len} needs {need:,} (lower judge.eval_tokens)")
    return np.array(tokens[:need], dtype=np.int64).reshape(n_rows, seq_len + 1)


def val_vocab(data_dir) -> int:
    return int(_open(Path(data_dir) / "val")[2]["vocab_size"])


def token_bytes(data_dir, vocab_size: int) -> np.ndarray:
    path = Path(data_dir) / "tokenizer" / TOKEN_BYTES_FILE
    try:
        table = np.load(path).astype(np.int64)
    except OSError as exc:
        raise Outcome("infra", f"{path}: cannot read the byte length of tokens ({exc})") from exc
    if table.shape != (vocab_size,):
        raise Outcome("infra", f"{path}: shape {table.shape}, expected ({vocab_size},) for vocab_size {vocab_size}")
    return table


def _open(folder: Path):
    try:
        return open_split(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise Outcome("infra", f"{folder}: cannot open the token cache ({exc})") from exc


def load_weights(path) -> dict:
    """torch.load with weights_only=True (no code from the file runs), keys without `_orig_mod.`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise Outcome("crash", f"weights {path}: cannot load ({type(exc).__name__}: {_cut(str(exc))})") from exc
    if not isinstance(state, dict):
        raise Outcome("crash", f"weights {path}: holds a {type(state).__name__}, expected a state_dict")
    return {plain_key(k): v for k, v in state.items()}


def train_view(data_dir, folder: Path) -> Path:
    """A train folder holding only meta.json, all that build_model() may read through data_info()."""
    view = folder / "train"
    view.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(data_dir) / "train" / META_FILE, view / META_FILE)
    return view


def denied_paths(data_dir) -> list[str]:
    """What the candidate may not read inside the judge: the data dir, in the standard CACHE/data/<fingerprint>
    layout every prepared data dir and the downloads, and a local corpus the validation split was cut from."""
    data_dir = Path(data_dir).resolve()
    deny = [data_dir]
    if data_dir.parent.name == "data":
        deny += [data_dir.parent, *(data_dir.parents[1] / name for name in DOWNLOAD_DIRS)]
    try:
        corpus = json.loads((data_dir / "spec.json").read_text()).get("corpus", "")
    except (OSError, ValueError):
        corpus = ""
    if corpus.startswith("local:"):
        deny.append(Path(corpus[len("local:"):]).expanduser().resolve())
    return [str(p) for p in deny]


def compile_cache_dirs() -> list[str]:
    """Folders torch.compile / triton write to, should a candidate's model compile inside the judge."""
    user = os.environ.get("USER", "user")
    return [os.environ.get("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")),
            os.environ.get("TRITON_CACHE_DIR", os.path.expanduser("~/.triton")),
            os.path.expanduser("~/.cache")]


# ---------------------------------------------------------------------------------------------- integrity
def _verify(snapshot: Snapshot, when: str) -> None:
    moved = snapshot.changes()
    if moved:
        snapshot.restore()
        shown = ", ".join(moved[:5]) + (f" and {len(moved) - 5} more" if len(moved) > 5 else "")
        raise Outcome("invalid", f"monkeypatched {shown} ({when})")


# ---------------------------------------------------------------------------------------------- candidate
@contextlib.contextmanager
def blame(stage: str, train_py: Path, denials=()):
    """Turn an exception raised by candidate code into crash (invalid when the sandbox has refused something)."""
    try:
        yield
    except Outcome:
        raise
    except (Exception, SystemExit) as exc:
        where = _candidate_line(exc, train_py)
        text = f"{stage}{where}: {type(exc).__name__}: {_cut(str(exc))}"
        if denials:
            raise Outcome("invalid", f"sandbox refused: {_cut(denials[0])} ({text})") from exc
        raise Outcome("crash", text) from exc


def _candidate_line(exc: BaseException, train_py: Path) -> str:
    """' (train.py:LINE)' for the deepest frame in the candidate's file; reads no source (the sandbox may deny it)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == str(train_py):
            line = tb.tb_lineno
        tb = tb.tb_next
    return f" ({train_py.name}:{line})" if line else ""


def _cut(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS] + "..."


def candidate_module(train_py: Path) -> types.ModuleType:
    """A fresh module under a unique name (never __main__: a native candidate's training does not run)."""
    name = f"{CANDIDATE_PREFIX}{uuid.uuid4().hex[:12]}"
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, train_py))
    sys.modules[name] = module
    return module


def import_candidate(train_py: Path, code) -> types.ModuleType:
    """Execute the compiled candidate under a unique module name."""
    module = candidate_module(train_py)
    exec(code, module.__dict__)
    return module


def run_until_data(train_py: Path, code, seq_len: int, meta: dict, denials) -> types.ModuleType:
    """An adopted script's top-level code, with the judge's `prepare`, up to its first make_dataloader call."""
    module, asked = candidate_module(train_py), []
    previous = sys.modules.get(PREPARE)
    sys.modules[PREPARE] = judge_prepare(seq_len, meta["vocab_size"], meta["bos_id"], asked)
    try:
        with blame("top-level code", train_py, denials):
            try:
                exec(code, module.__dict__)
            except ModelReady:
                return module
            except BaseException:
                if asked:
                    raise Outcome("invalid", "caught the judge's stop at make_dataloader and ran on") from None
                raise
    finally:
        if previous is None:
            sys.modules.pop(PREPARE, None)
        else:
            sys.modules[PREPARE] = previous
    if asked:
        raise Outcome("invalid", "caught the judge's stop at make_dataloader and ran on")
    raise Outcome("crash", f"{train_py}: the script ran to its end without asking make_dataloader for training "
                           f"data, so the judge found no built model")


def build(module, state: dict, device: str, train_py: Path, denials) -> torch.nn.Module:
    """build_model(), then load_model()."""
    make = vars(module).get("build_model")
    if not callable(make):
        raise Outcome("crash", f"{train_py}: defines no build_model() function")
    with blame("build_model()", train_py, denials):
        model = make()
    if not isinstance(model, torch.nn.Module):
        raise Outcome("crash", f"{train_py}: build_model() returned {type(model).__name__}, not a torch.nn.Module")
    return load_model(model, state, device, train_py, denials, "build_model()")


def adopted_model(module, state: dict, device: str, train_py: Path, denials) -> torch.nn.Module:
    """The module-level model of an adopted script whose parameters are the handed-over ones, then load_model()."""
    model = matching_model(vars(module), state.keys())
    if model is None:
        names = [type(m).__name__ for m in module_models(vars(module))] or ["none"]
        raise Outcome("crash", f"{train_py}: no module-level torch.nn.Module built before the first make_dataloader "
                               f"call has the handed-over weights' keys (modules found: {', '.join(names)})")
    return load_model(model, state, device, train_py, denials, "the script's model")


def load_model(model, state: dict, device: str, train_py: Path, denials, what: str) -> torch.nn.Module:
    """Strict load of the handed-off weights, eval mode, on device."""
    try:
        torch.nn.Module.load_state_dict(model, state, strict=True)
    except Exception as exc:
        raise Outcome("crash", f"weights do not match {what}: {_cut(str(exc))}") from exc
    with blame("moving the model to " + device, train_py, denials):
        model.to(device)
        model.eval()
    return model


def count_params(model: torch.nn.Module) -> int:
    """Parameters counted once per tensor (tied weights once), by storage, offset and shape."""
    seen, total = set(), 0
    for p in torch.nn.Module.parameters(model):
        key = (str(p.device), p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape), p.stride())
        if key not in seen:
            seen.add(key)
            total += p.numel()
    return total


# ---------------------------------------------------------------------------------------------- scoring
def forward_context(device: str):
    """bf16 autocast for the forward on CUDA; plain float32 on CPU."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def checked_logits(model, inputs: torch.Tensor, vocab: int, device: str, what: str) -> torch.Tensor:
    """model(inputs) that must be a plain (B, T, vocab) float tensor of finite values, else invalid."""
    with forward_context(device):
        out = model(inputs)
    if type(out) is not torch.Tensor:
        raise Outcome("invalid", f"{what}: forward returned {type(out).__name__}, expected a torch.Tensor of logits")
    want = (*inputs.shape, vocab)
    if tuple(out.shape) != want:
        raise Outcome("invalid", f"{what}: logits of shape {tuple(out.shape)}, expected {want} (batch, time, vocab)")
    if not out.is_floating_point():
        raise Outcome("invalid", f"{what}: logits of dtype {out.dtype}, expected a floating dtype")
    if not bool(torch.isfinite(out).all()):
        raise Outcome("invalid", f"{what}: non-finite logits (NaN or inf)")
    return out


def batch_nats(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> float:
    """Sum over positions of weight * -log softmax(logits)[target], in float32 (summed in float64)."""
    rows, steps, vocab = logits.shape
    per_call = max(1, CE_CHUNK_ELEMENTS // max(1, steps * vocab))
    total = 0.0
    for i in range(0, rows, per_call):
        logp = torch.log_softmax(logits[i:i + per_call].float(), dim=-1)
        picked = torch.gather(logp, -1, targets[i:i + per_call].unsqueeze(-1)).squeeze(-1)
        total += float(torch.sum(-picked.double() * weight[i:i + per_call]))
    return total


def score(model, rows: np.ndarray, table: np.ndarray, cfg: JudgeConfig, device: str, vocab: int,
          train_py: Path, denials) -> dict:
    """Forward every row in batches; sum nats and bytes over targets with bytes > 0; probe one batch."""
    batches = list(range(0, len(rows), cfg.eval_batch))
    full = [k for k, s in enumerate(batches) if s + cfg.eval_batch <= len(rows)] or [0]
    probe_at, probe_seed = secrets.choice(full), secrets.randbits(31)
    sums = {"nats": 0.0, "bytes": 0, "tokens": 0, "probe": "skipped (probe_positions = 0)"}
    for k, start in enumerate(batches):
        chunk = rows[start:start + cfg.eval_batch]
        inputs = torch.from_numpy(np.ascontiguousarray(chunk[:, :-1])).to(device)
        nbytes = table[chunk[:, 1:]]
        weight = torch.from_numpy((nbytes > 0).astype(np.float64)).to(device)
        what = f"evaluation batch {k} (rows {start}..{start + len(chunk) - 1})"
        with torch.no_grad():
            with blame(f"forward of {what}", train_py, denials):
                logits = checked_logits(model, inputs, vocab, device, what)
            targets = torch.from_numpy(np.ascontiguousarray(chunk[:, 1:])).to(device)
            sums["nats"] += batch_nats(logits, targets, weight)
            del logits
            if k == probe_at and cfg.probe_positions > 0:
                sums["probe"] = run_probe(model, inputs, cfg, device, probe_seed, train_py, denials)
        sums["bytes"] += int(nbytes.sum())
        sums["tokens"] += int((nbytes > 0).sum())
    return sums


def run_probe(model, inputs, cfg: JudgeConfig, device: str, seed: int, train_py: Path, denials) -> str:
    with blame("causality probe", train_py, denials), forward_context(device):
        ok, reason = probe(model, inputs, cfg.probe_positions, seed)
    if not ok:
        raise Outcome("invalid", reason)
    return f"{reason} (seed {seed})"


# ---------------------------------------------------------------------------------------------- evaluate
def evaluate(train_py, weights, data_dir, cfg: JudgeConfig, device: str = "cpu", *,
             sandbox: bool = False, allow_write=()) -> dict:
    """Score the candidate train.py with its handed-off weights on the fixed validation rows.

    Returns the result dict (run_judge.RESULT_KEYS plus `probe` and `sandboxed`). The candidate's module code runs in
    this process; with sandbox=True, judge.guard.lock_down is installed before it runs, which
    cannot be undone: the CLI passes True, in-process callers (tests) usually do not."""
    t0 = time.perf_counter()
    result = empty_result()
    work = Path(tempfile.mkdtemp(prefix="popsearch-judge-"))
    before = {"modules": set(sys.modules), "env": os.environ.get(ENV_TRAIN_DIR), "tempdir": tempfile.tempdir}
    tempfile.tempdir = str(work)   # temp folders the candidate's code makes (torch.compile's on CUDA) land in scratch
    try:
        _evaluate(Path(train_py).resolve(), weights, data_dir, cfg, device, sandbox,
                  [*allow_write, str(work)], work, result)
    except Outcome as out:
        result.update(status=out.status, reason=out.reason)
    finally:
        _tidy(before, work)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def _evaluate(train_py: Path, weights, data_dir, cfg, device, sandbox, allow_write, work, found: dict) -> None:
    """Steps (a)..(i) of the evaluation; fills `found` as it goes (params stay known when a later step fails)."""
    rows = val_rows(data_dir, cfg.seq_len, cfg.eval_tokens)  # (a)
    vocab = val_vocab(data_dir)
    table = token_bytes(data_dir, vocab)
    view = train_view(data_dir, work)
    state = load_weights(weights)  # (b)
    try:
        source = train_py.read_bytes()
        code = compile(source, str(train_py), "exec", dont_inherit=True)
    except (OSError, SyntaxError, ValueError) as exc:
        raise Outcome("crash", f"{train_py}: cannot compile ({type(exc).__name__}: {_cut(str(exc))})") from exc
    adopted = protocol(source.decode("utf-8", "replace")) == ADOPTED
    meta = read_meta(view)
    guard_module = guard if sandbox else None
    reference = canary(vocab, cfg.seq_len, device, batch_nats)
    snapshot = Snapshot()  # (c)
    denials = _lock_down(guard_module, data_dir, allow_write, train_py)  # (d)
    found["sandboxed"] = guard_module is not None
    os.environ[ENV_TRAIN_DIR] = str(view)
    if adopted:  # (e, f) the script's own top-level code builds the model, stopped at its first data request
        module = run_until_data(train_py, code, cfg.seq_len, meta, denials)
        _verify(snapshot, "at import")
        model = adopted_model(module, state, device, train_py, denials)
    else:
        with blame("import", train_py, denials):  # (e)
            module = import_candidate(train_py, code)
        _verify(snapshot, "at import")
        model = build(module, state, device, train_py, denials)  # (f)
    found["params"] = count_params(model)
    _verify(snapshot, "in build_model")
    sums = score(model, rows, table, cfg, device, vocab, train_py, denials)  # (g, i)
    _verify(snapshot, "during evaluation")  # (h)
    if not math.isclose(canary(vocab, cfg.seq_len, device, batch_nats), reference, rel_tol=CANARY_RTOL):
        raise Outcome("invalid", "the loss computation gives a different number after the candidate ran "
                                 "(torch kernels or hooks were changed)")
    if denials:
        raise Outcome("invalid", f"sandbox refused: {_cut('; '.join(denials[:3]))}")
    if sums["bytes"] <= 0:
        raise Outcome("infra", f"{data_dir}: the evaluation rows hold no token with a byte length > 0")
    found.update(status="ok", reason="", nats=sums["nats"], bytes=sums["bytes"], tokens=sums["tokens"],
                 val_bpb=sums["nats"] / math.log(2) / sums["bytes"], val_loss=sums["nats"] / max(1, sums["tokens"]),
                 causal=sums["probe"].startswith("causal"), probe=sums["probe"])


def _lock_down(guard_module, data_dir, allow_write, train_py: Path) -> list:
    """Install judge.guard's audit hook: no reads of the data, no processes, no frame or gc tricks from the
    candidate's file, no re-import of judge modules. Returns the live list of its refusals. guard_module None
    (sandbox=False) is for in-process callers only: the judge CLI always passes sandbox=True."""
    if guard_module is None:
        return []
    watched = sorted(n for n in sys.modules if n == "judge" or n.startswith("judge."))
    try:
        return guard_module.lock_down(deny_read=denied_paths(data_dir), allow_write=[*allow_write, *compile_cache_dirs()],
                               allow_subprocess=False, candidate_files=[str(train_py)], watch_modules=watched)
    except Exception as exc:
        raise Outcome("infra", f"judge.guard.lock_down failed: {type(exc).__name__}: {exc}") from exc


def _tidy(before: dict, work: Path) -> None:
    """Undo what evaluating changed in this process: candidate modules, the env var, the temp folder."""
    for name in set(sys.modules) - before["modules"]:
        if name.startswith(CANDIDATE_PREFIX):
            sys.modules.pop(name, None)
    tempfile.tempdir = before["tempdir"]
    if before["env"] is None:
        os.environ.pop(ENV_TRAIN_DIR, None)
    else:
        os.environ[ENV_TRAIN_DIR] = before["env"]
    shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m judge.evaluate", description=__doc__)
    ap.add_argument("--train-py", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--seq-len", type=int, default=JudgeConfig.seq_len)
    ap.add_argument("--eval-tokens", type=int, default=JudgeConfig.eval_tokens)
    ap.add_argument("--eval-batch", type=int, default=JudgeConfig.eval_batch)
    ap.add_argument("--probe-positions", type=int, default=JudgeConfig.probe_positions)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True, help="result JSON, written atomically")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--nonce-stdin", action="store_true",
                    help="read a nonce line from stdin first and put it in the result (run_judge uses it)")
    return ap.parse_args(argv)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def main(argv=None) -> None:
    args = parse_args(argv)
    nonce = sys.stdin.readline().strip() if args.nonce_stdin else ""
    sys.dont_write_bytecode = True          # under the sandbox, imports must not try to write .pyc files
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = JudgeConfig(seq_len=args.seq_len, eval_tokens=args.eval_tokens, eval_batch=args.eval_batch,
                      probe_positions=args.probe_positions)
    out = Path(args.out).resolve()
    try:
        result = evaluate(args.train_py, args.weights, args.data_dir, cfg, args.device,
                          sandbox=True, allow_write=[str(out.parent)])
    except BaseException as exc:             # a bug of the judge, or a candidate that broke it
        result = empty_result("crash", f"judge failed: {type(exc).__name__}: {_cut(str(exc))}")
    result["nonce"] = nonce
    write_json(out, result)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)                              # no atexit handler or finalizer of the candidate runs after this


if __name__ == "__main__":
    main()
