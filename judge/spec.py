"""Data and judge settings (config sections) and the on-disk description of prepared data.

DataConfig/JudgeConfig are sections of the one popsearch config; DataSpec is what `prepare` writes."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

# Environment variables that connect a trial process to the judge's data. The trial sees only
# the training split: POPSEARCH_TRAIN_DIR points at DATA_DIR/train and nothing else.
ENV_CACHE = "POPSEARCH_CACHE"
ENV_TRAIN_DIR = "POPSEARCH_TRAIN_DIR"
ENV_WEIGHTS = "POPSEARCH_WEIGHTS"
ENV_KERNEL_DIR = "POPSEARCH_KERNEL_DIR"          # a local FA3 kernel repo (build/<variant>/...), no hub needed
# Where the `kernels` package (and trainer.attention) find kernel code: fixed before a candidate's code runs,
# so that a candidate cannot point them at files it wrote (judge/guard.py refuses changing them).
KERNEL_ENV = ("LOCAL_KERNELS", "KERNELS_CACHE", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT",
              ENV_KERNEL_DIR)
DATA_FORMAT = 1          # bump when extraction, cleaning or the token cache layout changes


def local_listing(corpus: str) -> list:
    """For local:PATH, the (name, size) of each file, so edited corpora get a fresh cache."""
    if not corpus.startswith("local:"):
        return []
    root = Path(corpus[len("local:"):]).expanduser()
    if not root.is_dir():
        return []
    return sorted((p.name, p.stat().st_size) for p in root.iterdir() if p.is_file())


@dataclass
class DataConfig:
    """Which corpus, which tokenizer, where the cache lives."""
    corpus: str = "builtin"              # builtin | local:PATH | climbmix
    vocab_size: int = 2048               # BPE vocabulary including special tokens
    cache_dir: str = ""                  # '' -> $POPSEARCH_CACHE or ~/.cache/popsearch
    max_train_docs: int = 0              # 0 = every document of the training split
    val_docs: int = 0                    # builtin corpus: documents held out (0 = 5% of them)
    climbmix_url: str = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
    climbmix_shards: int = 2             # training shards to fetch (the validation shard comes too)
    climbmix_val_shard: int = 6542       # the pinned validation shard (the last one of ClimbMix)
    download_workers: int = 8
    download_retries: int = 5

    def fingerprint(self) -> str:
        """Hash of every setting that changes the tokens on disk (not of where they live)."""
        keep = {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("cache_dir", "download_workers", "download_retries")}
        keep["format"] = DATA_FORMAT
        keep["local_files"] = local_listing(self.corpus)
        blob = json.dumps(keep, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def cache_root(self) -> Path:
        root = self.cache_dir or os.environ.get(ENV_CACHE) or "~/.cache/popsearch"
        return Path(root).expanduser().resolve()

    def data_dir(self) -> Path:
        return self.cache_root() / "data" / self.fingerprint()


@dataclass
class JudgeConfig:
    """How the judge scores a model: a fixed amount of held-out text at a fixed shape."""
    seq_len: int = 256                   # tokens per evaluation row (the model must accept it)
    eval_tokens: int = 32768             # validation tokens scored, constant per config
    eval_batch: int = 8                  # rows per forward pass of the judge
    probe_positions: int = 4             # causality probe: cut points checked per probe row
    timeout_seconds: float = 600.0       # hard limit on one evaluation process


@dataclass
class DataSpec:
    """What `prepare` produced: read from DATA_DIR/spec.json."""
    data_dir: str
    fingerprint: str
    corpus: str
    vocab_size: int
    bos_id: int
    token_dtype: str                     # numpy dtype name of the token files
    n_train_tokens: int
    n_val_tokens: int
    n_train_docs: int
    n_val_docs: int
    extra: dict = field(default_factory=dict)

    @property
    def train_dir(self) -> Path:
        return Path(self.data_dir) / "train"

    @property
    def val_dir(self) -> Path:
        return Path(self.data_dir) / "val"

    @property
    def tokenizer_dir(self) -> Path:
        return Path(self.data_dir) / "tokenizer"

    def save(self) -> None:
        path = Path(self.data_dir) / "spec.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, data_dir: str | Path) -> "DataSpec":
        path = Path(data_dir) / "spec.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no prepared data here (run `popsearch prepare`)")
        return cls(**json.loads(path.read_text()))
