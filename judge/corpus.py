"""Corpus sources (builtin, local:PATH, climbmix) turned into a deterministic train/val split of documents.

Every source yields plain text documents of ~1-4k characters; the validation split is pinned and disjoint."""
from __future__ import annotations

import ast
import hashlib
import json
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

MIN_DOC_CHARS = 1000           # a document is flushed once it reaches this size ...
MAX_DOC_CHARS = 4000           # ... and never grows past this one (long paragraphs are hard-split)
MIN_DOCSTRING_CHARS = 24       # shorter docstrings ("Return self.") are noise, not prose
VAL_FRACTION = 0.05            # share of documents held out when nothing pins the split
BUILTIN_VAL_FRACTION = 0.10    # builtin is small: hold out more so the judge has >= 64k val tokens
BUILTIN_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                               "__pycache__", "lib2to3", "turtledemo"})
DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
STATEMENT_LISTS = ("body", "orelse", "finalbody", "handlers", "cases")
SHARD_NAME = re.compile(r"^shard_(\d+)\.parquet$")
TEXT_SUFFIXES = (".parquet", ".txt", ".jsonl")


@dataclass
class Corpus:
    """The split corpus: documents in a fixed order, plus a description for spec.json."""
    train: list[str]
    val: list[str]
    info: dict = field(default_factory=dict)


def load_corpus(cfg, cache_root: Path, log=print) -> Corpus:
    """Build the corpus named by cfg.corpus (builtin | local:PATH | climbmix), split and capped."""
    name = cfg.corpus
    if name == "builtin":
        corpus = builtin_corpus(cfg.val_docs)
    elif name.startswith("local:"):
        corpus = local_corpus(Path(name[len("local:"):]).expanduser(), cfg.val_docs, cfg.max_train_docs)
    elif name == "climbmix":
        from judge.download import download_climbmix
        train_shards, val_shard = download_climbmix(cfg, cache_root / "climbmix", log=log)
        corpus = shard_corpus(train_shards, val_shard, cfg.val_docs, cfg.max_train_docs)
        corpus.info["source"] = cfg.climbmix_url
    else:
        raise ValueError(f"data.corpus: unknown corpus {name!r} (expected builtin, local:PATH or climbmix)")
    if cfg.max_train_docs:
        corpus.train = corpus.train[:cfg.max_train_docs]
    if not corpus.train or not corpus.val:
        raise ValueError(f"data.corpus {name!r}: empty split (train {len(corpus.train)} docs, "
                         f"val {len(corpus.val)} docs)")
    return corpus


# ---------------------------------------------------------------- documents

def chunk_text(text: str) -> list[str]:
    """Split text into documents of at most MAX_DOC_CHARS at paragraph boundaries, greedily packed."""
    docs, cur = [], ""
    for para in _paragraphs(text):
        if cur and (len(cur) >= MIN_DOC_CHARS or len(cur) + 2 + len(para) > MAX_DOC_CHARS):
            docs.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        docs.append(cur)
    return docs


def _paragraphs(text: str):
    for para in re.split(r"\n\s*\n", text):
        para = para.strip("\n")
        if not para.strip():
            continue
        while len(para) > MAX_DOC_CHARS:            # a giant paragraph: cut at the last newline/space
            cut = max(para.rfind("\n", 0, MAX_DOC_CHARS), para.rfind(" ", 0, MAX_DOC_CHARS))
            cut = cut if cut > MAX_DOC_CHARS // 2 else MAX_DOC_CHARS
            yield para[:cut].rstrip()
            para = para[cut:].lstrip()
        if para:
            yield para


def split_units(units: list[tuple[str, list[str]]], val_docs: int,
                fraction: float = VAL_FRACTION) -> tuple[list[str], list[str]]:
    """Hold out whole units (files, topics) in a pinned order given by a hash of their names.

    Units are taken for validation until val_docs documents (0 = `fraction` of all) are held out;
    at least one unit always stays in training. Both splits keep the units' original order."""
    total = sum(len(docs) for _, docs in units)
    target = val_docs or max(1, round(fraction * total))
    by_hash = sorted(range(len(units)), key=lambda i: hashlib.sha1(units[i][0].encode()).hexdigest())
    held, count = set(), 0
    for i in by_hash[:-1]:
        if count >= target:
            break
        held.add(i)
        count += len(units[i][1])
    train = [d for i, (_, docs) in enumerate(units) if i not in held for d in docs]
    val = [d for i, (_, docs) in enumerate(units) if i in held for d in docs]
    return train, val


# ---------------------------------------------------------------- builtin

def builtin_corpus(val_docs: int = 0) -> Corpus:
    """English prose shipped with Python: stdlib docstrings (parsed, never imported) and pydoc topics."""
    root = Path(sysconfig.get_paths()["stdlib"])
    units, seen = [], set()
    for path in _stdlib_sources(root):
        text = "\n\n".join(d for d in _docstrings(path) if _first_time(d, seen))
        if text:
            units.append((f"stdlib/{path.relative_to(root).as_posix()}", chunk_text(text)))
    from pydoc_data.topics import topics
    for name in sorted(topics):
        text = clean_text(topics[name])
        if text:
            units.append((f"pydoc/{name}", chunk_text(text)))
    train, val = split_units(units, val_docs, BUILTIN_VAL_FRACTION)
    return Corpus(train, val, {"source": str(root), "units": len(units)})


def _stdlib_sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py")
                  if not BUILTIN_SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]))


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in _documented_nodes(tree):
        doc = ast.get_docstring(node, clean=True)
        doc = clean_text(doc) if doc else ""
        if len(doc) >= MIN_DOCSTRING_CHARS:
            out.append(doc)
    return out


def _documented_nodes(node):
    """Module, classes and functions in source order, visiting statement bodies only (not expressions)."""
    if isinstance(node, DOCUMENTED):
        yield node
    for name in STATEMENT_LISTS:
        for child in getattr(node, name, ()):
            if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                yield from _documented_nodes(child)


def _first_time(text: str, seen: set) -> bool:
    if text in seen:
        return False
    seen.add(text)
    return True


def clean_text(text: str) -> str:
    """Light cleaning: drop doctest blocks, trailing spaces, runs of blank lines, control characters."""
    lines, in_doctest = [], False
    for line in text.replace("\r\n", "\n").replace("\t", "    ").split("\n"):
        stripped = line.strip()
        if stripped.startswith(">>>"):
            in_doctest = True
        elif not stripped:
            in_doctest = False
        if not in_doctest:
            lines.append(line.rstrip())
    text = "\n".join(lines)
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ---------------------------------------------------------------- local folders

def local_corpus_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(TEXT_SUFFIXES))


def local_corpus_problem(folder: Path) -> str:
    """Why a local:PATH corpus folder can't be read ('' when it can)."""
    if not folder.is_dir():
        return "no such folder"
    if not local_corpus_files(folder):
        return "no .parquet, .txt or .jsonl files"
    return ""


def local_corpus(folder: Path, val_docs: int = 0, max_train_docs: int = 0) -> Corpus:
    """A folder of parquet (`text` column), .txt or .jsonl (`text` field) files.

    Parquet shards named shard_XXXXX.parquet: the LAST shard is the validation split and other files
    are ignored. Otherwise whole files are held out by split_units (each document is its own unit
    when there are < 20 files)."""
    problem = local_corpus_problem(folder)
    if problem:
        raise FileNotFoundError(f"data.corpus local:{folder}: {problem}")
    files = local_corpus_files(folder)
    shards = [p for p in files if SHARD_NAME.match(p.name)]
    info = {"source": str(folder.resolve()), "files": len(files)}
    if len(shards) >= 2:                             # other files (README.txt, ...) are not corpus
        shards.sort(key=lambda p: int(SHARD_NAME.match(p.name).group(1)))
        corpus = shard_corpus(shards[:-1], shards[-1], val_docs, max_train_docs)
        corpus.info.update(info, ignored=sorted(p.name for p in files if p not in shards))
        return corpus
    units = [(p.name, read_file_texts(p)) for p in files]
    if len(units) < 1 / VAL_FRACTION:
        units = [(f"{name}#{i}", [d]) for name, docs in units for i, d in enumerate(docs)]
    train, val = split_units(units, val_docs)
    return Corpus(train, val, info)


def shard_corpus(train_shards: list[Path], val_shard: Path, val_docs: int = 0,
                 max_train_docs: int = 0) -> Corpus:
    """Parquet shards whose split is pinned by name: training shards in order, one validation shard."""
    train = []
    for shard in train_shards:
        train.extend(read_parquet_texts(shard, (max_train_docs - len(train)) if max_train_docs else 0))
        if max_train_docs and len(train) >= max_train_docs:
            break
    val = read_parquet_texts(val_shard, val_docs)
    return Corpus(train, val, {"val_shard": val_shard.name, "train_shards": len(train_shards)})


def read_file_texts(path: Path) -> list[str]:
    """Documents of one file: parquet/jsonl rows as they are, a .txt file chunked at paragraphs."""
    if path.suffix == ".parquet":
        return read_parquet_texts(path)
    if path.suffix == ".jsonl":
        docs = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'text' field ({e})")
                if text and text.strip():
                    docs.append(text)
        return docs
    return chunk_text(clean_text(path.read_text(encoding="utf-8", errors="replace")))


def read_parquet_texts(path: Path, limit: int = 0) -> list[str]:
    """The `text` column of a parquet file (first `limit` rows when limit > 0), empty rows dropped."""
    pf = pq.ParquetFile(path)
    if "text" not in pf.schema_arrow.names:
        raise ValueError(f"{path}: parquet file has no 'text' column (columns: {pf.schema_arrow.names})")
    docs = []
    for batch in pf.iter_batches(columns=["text"], batch_size=4096):
        docs.extend(t for t in batch.column(0).to_pylist() if t and t.strip())
        if limit and len(docs) >= limit:
            return docs[:limit]
    return docs
