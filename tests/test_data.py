"""Data side of the judge on real files: corpus split, tokenizer, token cache, prepare's cache and locking, loader.

Small local corpora are written to tmp dirs; the builtin corpus comes from conftest's session `data_spec`."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from judge.corpus import MAX_DOC_CHARS, chunk_text, local_corpus, split_units
from judge.loader import TrainingBatches, data_info
from judge.prepare import prepare
from judge.spec import ENV_TRAIN_DIR, DataConfig, DataSpec
from judge.tokencache import open_split
from judge.tokenizer import BOS, load_encoding, load_token_bytes

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = Path("/work/shared/corpus")
WORDS = ("the river model token budget judge archive branch python data light stone city winter "
         "garden music theory number system paper window engine signal market").split()
QUIET = lambda *a, **k: None  # noqa: E731

torch.set_num_threads(1)


def prose(rng: random.Random, n_sentences: int) -> str:
    sentences = []
    for _ in range(n_sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 14))]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def write_txt_corpus(folder: Path, n_files=24, seed=0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        paras = [f"File {i} paragraph {j}. " + prose(rng, rng.randint(2, 8)) for j in range(rng.randint(3, 12))]
        (folder / f"doc_{i:03d}.txt").write_text("\n\n".join(paras))
    return folder


def docs_of(split_dir: Path) -> list[np.ndarray]:
    tokens, offsets, _ = open_split(split_dir)
    return [np.asarray(tokens[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]


# ------------------------------------------------------------------ corpus

def test_chunk_text_bounds_and_content():
    rng = random.Random(1)
    text = "\n\n".join(prose(rng, rng.randint(1, 30)) for _ in range(60)) + "\n\n" + "x" * 9000
    docs = chunk_text(text)
    assert all(0 < len(d) <= MAX_DOC_CHARS for d in docs)
    assert "".join(docs).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")


def test_split_units_pinned_and_disjoint():
    units = [(f"unit{i}", [f"u{i}d{j}" for j in range(1 + i % 3)]) for i in range(100)]
    train, val = split_units(units, 0)
    assert (train, val) == split_units(list(units), 0)
    assert not set(train) & set(val) and len(train) + len(val) == sum(len(d) for _, d in units)
    held_units = {d.split("d")[0] for d in val}
    assert all(f"{u}d0" in val for u in held_units)              # whole units held out
    assert 0.04 <= len(val) / (len(train) + len(val)) <= 0.08
    _, val20 = split_units(units, 20)
    assert 20 <= len(val20) <= 22


def test_local_parquet_shards_last_is_val(tmp_path):
    for i in range(3):
        texts = [f"shard {i} doc {j} " + "words " * 20 for j in range(10 + i)]
        pq.write_table(pa.table({"text": texts}), tmp_path / f"shard_{i:05d}.parquet")
    (tmp_path / "README.txt").write_text("About this corpus.\n\nNot a document.")
    corpus = local_corpus(tmp_path)
    assert len(corpus.train) == 21 and all(d.startswith(("shard 0", "shard 1")) for d in corpus.train)
    assert len(corpus.val) == 12 and all(d.startswith("shard 2") for d in corpus.val)
    assert corpus.info["ignored"] == ["README.txt"] and corpus.info["val_shard"] == "shard_00002.parquet"
    assert len(local_corpus(tmp_path, max_train_docs=5).train) == 5


def test_local_jsonl_and_errors(tmp_path):
    rng = random.Random(2)
    lines = [json.dumps({"text": f"record {i}. " + prose(rng, 3)}) for i in range(40)]
    (tmp_path / "a.jsonl").write_text("\n".join(lines))
    corpus = local_corpus(tmp_path)
    assert len(corpus.train) + len(corpus.val) == 40 and corpus.val and not set(corpus.train) & set(corpus.val)
    (tmp_path / "b.jsonl").write_text('{"text": "fine"}\n{"txt": "wrong key"}\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:2"):
        local_corpus(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        local_corpus(tmp_path / "missing")


# ------------------------------------------------------------------ builtin prepare (session fixture)

def test_builtin_layout_and_token_cache(data_spec):
    root = Path(data_spec.data_dir)
    assert DataSpec.load(root) == data_spec and data_spec.corpus == "builtin"
    enc = load_encoding(root)
    assert enc.n_vocab == data_spec.vocab_size == 512 and data_spec.bos_id == enc.encode_single_token(BOS) == 511
    token_bytes = load_token_bytes(root)
    assert token_bytes.shape == (512,) and token_bytes[511] == 0 and token_bytes[:256].tolist() == [1] * 256
    for split, n_docs in (("train", data_spec.n_train_docs), ("val", data_spec.n_val_docs)):
        tokens, offsets, meta = open_split(root / split)
        assert meta == {"vocab_size": 512, "bos_id": 511, "token_dtype": "uint16",
                        "n_tokens": len(tokens), "n_docs": n_docs}
        bos_at = np.flatnonzero(np.asarray(tokens) == 511)
        assert np.array_equal(bos_at, offsets[:-1])            # BOS starts every doc and nowhere else
        texts = pq.read_table(root / "corpus" / split).column("text").to_pylist()
        assert len(texts) == n_docs
        for i in (0, n_docs // 2, n_docs - 1):
            assert enc.decode(tokens[offsets[i] + 1:offsets[i + 1]].tolist()) == texts[i]
    assert data_info(data_spec.train_dir)["vocab_size"] == 512
    assert data_spec.n_val_tokens >= 32768                       # enough for JudgeConfig.eval_tokens


def test_builtin_train_val_disjoint(data_spec):
    root = Path(data_spec.data_dir)
    train = set(pq.read_table(root / "corpus" / "train").column("text").to_pylist())
    val = pq.read_table(root / "corpus" / "val").column("text").to_pylist()
    assert val and not train.intersection(val)
    train_docs = {d.tobytes() for d in docs_of(data_spec.train_dir)}
    assert not any(d.tobytes() in train_docs for d in docs_of(data_spec.val_dir))
    assert data_spec.n_val_docs / (data_spec.n_train_docs + data_spec.n_val_docs) < 0.2


# ------------------------------------------------------------------ prepare: cache, fingerprint, atomicity

def test_prepare_reuses_cache_and_separates_fingerprints(tmp_path):
    corpus = write_txt_corpus(tmp_path / "txt")
    cfg = DataConfig(corpus=f"local:{corpus}", vocab_size=300, cache_dir=str(tmp_path / "cache"))
    spec = prepare(cfg, log=QUIET)
    tokens = Path(spec.data_dir) / "train" / "tokens.bin"
    mtime = tokens.stat().st_mtime_ns
    lines = []
    assert prepare(cfg, log=lines.append) == spec and not lines and tokens.stat().st_mtime_ns == mtime
    other = prepare(DataConfig(corpus=f"local:{corpus}", vocab_size=320, cache_dir=str(tmp_path / "cache")),
                    log=QUIET)
    assert other.data_dir != spec.data_dir and other.vocab_size == 320 and spec.vocab_size == 300
    assert tokens.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (tmp_path / "cache" / "data").iterdir() if p.is_dir()) == sorted(
        [spec.fingerprint, other.fingerprint])
    assert spec.n_val_docs > 0 and spec.n_train_docs > 5 * spec.n_val_docs


def test_failed_build_leaves_nothing_and_half_built_dir_is_rebuilt(tmp_path):
    corpus = write_txt_corpus(tmp_path / "txt", n_files=4)
    (corpus / "broken.jsonl").write_text("not json\n")
    cfg = DataConfig(corpus=f"local:{corpus}", vocab_size=300, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"broken\.jsonl:1"):
        prepare(cfg, log=QUIET)
    data = tmp_path / "cache" / "data"
    assert [p.name for p in data.iterdir() if p.is_dir()] == []
    (corpus / "broken.jsonl").unlink()
    half = cfg.data_dir()
    (half / "train").mkdir(parents=True)                         # as if a build died before spec.json
    (data / f"{half.name}.tmp-stale").mkdir()
    spec = prepare(cfg, log=QUIET)
    assert (half / "spec.json").exists() and (half / "train" / "tokens.bin").exists()
    assert spec.n_train_docs > 0 and not list(data.glob("*.tmp-*"))


def test_concurrent_prepare_builds_once(tmp_path):
    corpus = write_txt_corpus(tmp_path / "txt", n_files=40)
    go = tmp_path / "go"
    script = (
        "import sys, time, os\n"
        "from judge.spec import DataConfig\nfrom judge.prepare import prepare\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
        f"spec = prepare(DataConfig(corpus='local:{corpus}', vocab_size=400, cache_dir={str(tmp_path / 'c')!r}))\n"
        "print('SPEC', spec.data_dir, spec.n_train_tokens)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env, cwd=tmp_path) for _ in range(2)]
    time.sleep(0.5)                                             # both imported and polling
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    both = "".join(outs)
    assert both.count("prepare: corpus split") == 1, both        # exactly one build
    specs = {line for out in outs for line in out.splitlines() if line.startswith("SPEC")}
    assert len(specs) == 1, outs
    assert not list((tmp_path / "c" / "data").glob("*.tmp-*"))


# ------------------------------------------------------------------ loader

def write_split_dir(folder: Path, docs: list[list[int]], bos: int = 99) -> Path:
    """A hand-made token cache split (every doc starts with BOS)."""
    folder.mkdir(parents=True)
    flat = np.concatenate([np.array([bos] + d, dtype=np.uint16) for d in docs])
    flat.tofile(folder / "tokens.bin")
    np.save(folder / "offsets.npy", np.concatenate([[0], np.cumsum([len(d) + 1 for d in docs])]).astype(np.int64))
    (folder / "meta.json").write_text(json.dumps({"vocab_size": 100, "bos_id": bos, "token_dtype": "uint16",
                                                  "n_tokens": int(len(flat)), "n_docs": len(docs)}))
    return folder


def segments(row: np.ndarray, bos: int) -> list[tuple]:
    cuts = list(np.flatnonzero(row == bos)) + [len(row)]
    return [tuple(row[a:b].tolist()) for a, b in zip(cuts[:-1], cuts[1:])]


def test_loader_rows_are_packed_whole_documents(data_spec):
    B, T, bos = 4, 200, data_spec.bos_id
    docs = {tuple(d.tolist()) for d in docs_of(data_spec.train_dir)}
    val_docs = {tuple(d.tolist()) for d in docs_of(data_spec.val_dir)}
    batches = TrainingBatches(B, T, seed=3, train_dir=data_spec.train_dir)
    for _ in range(20):
        x, y = next(batches)
        assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64 and x.is_contiguous()
        assert torch.equal(x[:, 1:], y[:, :-1]) and (x[:, 0] == bos).all()
        rows = torch.cat([x, y[:, -1:]], dim=1).numpy()
        for row in rows:
            parts = segments(row, bos)
            assert sum(map(len, parts)) == T + 1                # no padding: every token is data
            assert all(p in docs and p not in val_docs for p in parts[:-1])    # whole training docs
            assert any(d[:len(parts[-1])] == parts[-1] for d in docs)          # last one may be cropped
    assert batches.tokens_served == 20 * B * T and batches.batches_served == 20


def test_loader_best_fit_and_crop(tmp_path):
    docs = [[1] * 6, [2] * 3, [3] * 2, [4] * 12]                  # with BOS: lengths 7, 4, 3, 13
    split = write_split_dir(tmp_path / "train", docs)
    x, y = next(TrainingBatches(1, 9, train_dir=split))          # row of 10: 7 (largest fit) + 3
    assert torch.cat([x[0], y[0, -1:]]).tolist() == [99] + [1] * 6 + [99] + [3] * 2
    split = write_split_dir(tmp_path / "long", [[5] * 30, [6] * 40])
    x, y = next(TrainingBatches(2, 7, train_dir=split))          # nothing fits: crop the shortest
    assert x[0].tolist() == [99] + [5] * 6 and x[1].tolist() in ([99] + [5] * 6, [99] + [6] * 6)


def test_loader_epochs_and_seeds(tmp_path):
    rng = random.Random(0)
    docs = [[rng.randrange(0, 99) for _ in range(rng.randint(3, 40))] for _ in range(50)]
    split = write_split_dir(tmp_path / "train", docs)
    n_tokens = sum(len(d) + 1 for d in docs)
    a = TrainingBatches(4, 32, seed=1, train_dir=split)
    b = TrainingBatches(4, 32, seed=1, train_dir=split)
    c = TrainingBatches(4, 32, seed=2, train_dir=split)
    first = [next(a)[0] for _ in range(3 * n_tokens // (4 * 33))]
    assert all(torch.equal(u, next(b)[0]) for u in first)
    assert not all(torch.equal(u, next(c)[0]) for u in first)
    assert a.epoch >= 1                                          # passed the end of the first shuffle


def test_loader_env_and_errors(data_spec, monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_TRAIN_DIR, raising=False)
    with pytest.raises(RuntimeError, match=ENV_TRAIN_DIR):
        data_info()
    monkeypatch.setenv(ENV_TRAIN_DIR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        TrainingBatches(2, 8)
    monkeypatch.setenv(ENV_TRAIN_DIR, str(data_spec.train_dir))
    assert data_info() == json.loads((data_spec.train_dir / "meta.json").read_text())
    x, _ = next(TrainingBatches(2, 8))
    assert x.shape == (2, 8)
    with pytest.raises(ValueError, match="seq_len"):
        TrainingBatches(2, 0)


# ------------------------------------------------------------------ the shared corpus (optional)

@pytest.mark.skipif(not (SHARED_CORPUS / "shard_00000.parquet").exists(), reason="no /work/shared/corpus here")
def test_shared_corpus_prepare(tmp_path):
    cfg = DataConfig(corpus=f"local:{SHARED_CORPUS}", vocab_size=512, max_train_docs=200, val_docs=40,
                     cache_dir=str(tmp_path / "cache"))
    spec = prepare(cfg, log=QUIET)
    assert spec.n_train_docs == 200 and spec.n_val_docs == 40
    assert spec.extra["corpus_info"]["val_shard"] == "shard_00007.parquet"
    val = pq.read_table(SHARED_CORPUS / "shard_00007.parquet").column("text").to_pylist()[:40]
    assert pq.read_table(Path(spec.data_dir) / "corpus" / "val").column("text").to_pylist() == val
    x, y = next(TrainingBatches(2, 128, train_dir=spec.train_dir))
    assert (x[:, 0] == spec.bos_id).all() and torch.equal(x[:, 1:], y[:, :-1])
