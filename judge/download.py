"""Parallel HTTP downloads with retries, resume of partial files (.part + Range) and atomic completion.

Used for the ClimbMix parquet shards: {url}/shard_{i:05d}.parquet, the validation shard pinned to the last."""
from __future__ import annotations

import hashlib
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPException
from pathlib import Path

from judge import file_lock

CLIMBMIX_VAL_SHARD = 6542          # published layout: shard_00000 .. shard_06541 train, shard_06542 val
CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60
BACKOFF_SECONDS = 2.0              # first retry waits this long, doubling each time ...
BACKOFF_MAX_SECONDS = 60.0         # ... up to this
PROGRESS_SECONDS = 5.0             # a progress line at most this often
PARQUET_MAGIC = b"PAR1"
USER_AGENT = "popsearch/0.1 (+urllib)"
RETRYABLE_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(RuntimeError):
    """A file could not be downloaded (after retries, or on an error that retrying cannot fix)."""


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def climbmix_shards(cfg) -> tuple[list[int], int]:
    """(training shard indices, validation shard index) that cfg asks for."""
    val = getattr(cfg, "climbmix_val_shard", CLIMBMIX_VAL_SHARD)
    if not 1 <= cfg.climbmix_shards <= val:
        raise ValueError(f"data.climbmix_shards: {cfg.climbmix_shards} not in 1..{val} "
                         f"(shard {val} is the validation shard)")
    return list(range(cfg.climbmix_shards)), val


def download_climbmix(cfg, root: Path, log=print) -> tuple[list[Path], Path]:
    """Fetch the training shards and the pinned validation shard into root/<hash of url>/."""
    train, val = climbmix_shards(cfg)
    folder = root / hashlib.sha1(cfg.climbmix_url.encode()).hexdigest()[:12]
    base = cfg.climbmix_url.rstrip("/")
    jobs = [(f"{base}/{shard_name(i)}", folder / shard_name(i)) for i in train + [val]]
    download_files(jobs, workers=cfg.download_workers, retries=cfg.download_retries, log=log)
    return [dest for _, dest in jobs[:-1]], jobs[-1][1]


def download_files(jobs: list[tuple[str, Path]], workers: int = 8, retries: int = 5,
                   log=print, backoff: float = BACKOFF_SECONDS) -> None:
    """Download every (url, dest) not yet present, `workers` at a time; raise DownloadError on failures."""
    todo = [(url, Path(dest)) for url, dest in jobs if not Path(dest).exists()]
    if not todo:
        return
    folder = todo[0][1].parent
    folder.mkdir(parents=True, exist_ok=True)
    with _folder_lock(folder):
        todo = [(url, dest) for url, dest in todo if not dest.exists()]
        progress = Progress(len(todo), log)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(download_file, url, dest, retries, backoff, progress) for url, dest in todo]
            errors = [f.exception() for f in futures if f.exception() is not None]
        progress.finish()
    if errors:
        raise DownloadError(f"{len(errors)} of {len(todo)} downloads failed; first: {errors[0]}")


def _folder_lock(folder: Path):
    """One downloader per folder across processes (their .part files would collide)."""
    return file_lock.locked(folder / ".lock")


def download_file(url: str, dest: Path, retries: int = 5, backoff: float = BACKOFF_SECONDS,
                  progress: "Progress | None" = None) -> Path:
    """Fetch url into dest: write dest.part, resume it with a Range request, rename when complete."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        try:
            if _fetch_into(url, part, progress):
                _check_complete(part, dest)
                os.replace(part, dest)
                if progress:
                    progress.file_done()
                return dest
        except DownloadError:
            raise
        except (OSError, HTTPException, ValueError) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code not in RETRYABLE_HTTP:
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
            if attempt == retries:
                raise DownloadError(f"{url}: failed after {retries + 1} attempts: {e!r}") from e
            wait = min(BACKOFF_MAX_SECONDS, backoff * 2 ** attempt)
            if progress:
                progress.log(f"download: {dest.name}: {e!r}; retry {attempt + 1}/{retries} in {wait:.1f}s")
            time.sleep(wait)
    raise DownloadError(f"{url}: failed after {retries + 1} attempts")


def _fetch_into(url: str, part: Path, progress) -> bool:
    """One request: append to part from its current size. True when the whole file is there."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:                # nothing past `have`: complete if the size matches
            total = _range_total(e.headers.get("Content-Range", ""))
            if total == have:
                return True
            part.unlink()
            raise ValueError(f"range {have}- not satisfiable (size {total}); restarting") from e
        raise
    with resp:
        if have and resp.status != 206:          # the server ignored the Range: start over
            have = 0
        total = _expected_total(resp, have)
        with open(part, "ab" if have else "wb") as f:
            while chunk := resp.read(CHUNK_BYTES):
                f.write(chunk)
                have += len(chunk)
                if progress:
                    progress.add(len(chunk))
    if total is not None and have != total:
        raise ValueError(f"connection closed at byte {have} of {total}")
    return True


def _expected_total(resp, have: int) -> int | None:
    if resp.status == 206:
        total = _range_total(resp.headers.get("Content-Range", ""))
        if total is not None:
            return total
    length = resp.headers.get("Content-Length")
    return have + int(length) if length is not None else None


def _range_total(content_range: str) -> int | None:
    """Total size from 'bytes a-b/total' or 'bytes */total'."""
    total = content_range.rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def _check_complete(part: Path, dest: Path) -> None:
    """A parquet file must end with its magic; a bad file is deleted so the next attempt starts over."""
    if dest.suffix != ".parquet":
        return
    with open(part, "rb") as f:
        f.seek(max(0, part.stat().st_size - len(PARQUET_MAGIC)))
        ok = f.read() == PARQUET_MAGIC
    if not ok:
        part.unlink()
        raise ValueError(f"{dest.name}: downloaded file is not a complete parquet file")


class Progress:
    """Thread-safe byte and file counters, logged as a bar line at most every PROGRESS_SECONDS."""

    def __init__(self, n_files: int, log=print):
        self.n_files, self.done_files, self.bytes = n_files, 0, 0
        self._log, self._lock = log, threading.Lock()
        self._start = self._last = time.monotonic()
        self.log(f"download: {n_files} files")

    def log(self, line: str) -> None:
        with self._lock:
            self._log(line)

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            now = time.monotonic()
            if now - self._last >= PROGRESS_SECONDS:
                self._last = now
                self._log(self._line())

    def file_done(self) -> None:
        with self._lock:
            self.done_files += 1

    def finish(self) -> None:
        self.log(self._line())

    def _line(self) -> str:
        width = 20
        filled = int(width * self.done_files / max(1, self.n_files))
        rate = self.bytes / max(1e-9, time.monotonic() - self._start) / 1e6
        return (f"download: [{'#' * filled}{'.' * (width - filled)}] {self.done_files}/{self.n_files} files, "
                f"{self.bytes / 1e6:,.1f} MB, {rate:.1f} MB/s")
