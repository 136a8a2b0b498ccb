"""Downloads against a real HTTP server on 127.0.0.1: Range resume, retries, parallel files, climbmix prepare.

The server serves in-memory files and can fail a request or cut a response halfway."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from judge.download import DownloadError, download_file, download_files, shard_name
from judge.spec import DataConfig

FAST = 0.01    # retry backoff in tests (seconds)


class FileServer:
    """files: path -> bytes. faults: path -> list of 'fail' | 'cut' | 'norange', consumed one per GET."""

    def __init__(self):
        self.files, self.faults, self.requests = {}, {}, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                fault = server.faults.get(self.path, [None]).pop(0) if server.faults.get(self.path) else None
                body = server.files.get(self.path)
                if body is None:
                    return self.send_error(404)
                if fault == "fail":
                    return self.send_error(503)
                start = _range_start(self.headers.get("Range")) if fault != "norange" else 0
                if start >= len(body) and start:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if fault == "cut":
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def ranges(self, path):
        return [r for p, r in self.requests if p == path]


def _range_start(header):
    if not header:
        return 0
    return int(header.split("=")[1].split("-")[0])


@pytest.fixture
def server():
    srv = FileServer()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def parquet_bytes(tmp_path: Path, texts: list[str], name="x.parquet") -> bytes:
    path = tmp_path / name
    pq.write_table(pa.table({"text": texts}), path, row_group_size=50)
    return path.read_bytes()


def test_cut_response_is_resumed_with_range(server, tmp_path):
    body = parquet_bytes(tmp_path, [f"document {i} " * 40 for i in range(300)])
    server.files["/a.parquet"] = body
    server.faults["/a.parquet"] = ["cut"]
    dest = download_file(f"{server.url}/a.parquet", tmp_path / "out" / "a.parquet", retries=3, backoff=FAST)
    assert dest.read_bytes() == body
    ranges = server.ranges("/a.parquet")
    assert ranges[0] is None and len(ranges) == 2
    assert ranges[1] == f"bytes={len(body) // 2}-"          # continued where the cut left off
    assert not (tmp_path / "out" / "a.parquet.part").exists()


def test_existing_part_file_is_continued(server, tmp_path):
    body = b"0123456789" * 1000 + b"PAR1"
    server.files["/b.parquet"] = body
    out = tmp_path / "b.parquet"
    (tmp_path / "b.parquet.part").write_bytes(body[:4321])
    download_file(f"{server.url}/b.parquet", out, retries=0)
    assert out.read_bytes() == body
    assert server.ranges("/b.parquet") == ["bytes=4321-"]


def test_complete_part_file_gets_416_and_is_kept(server, tmp_path):
    body = b"abc" * 100 + b"PAR1"
    server.files["/c.parquet"] = body
    (tmp_path / "c.parquet.part").write_bytes(body)
    download_file(f"{server.url}/c.parquet", tmp_path / "c.parquet", retries=0)
    assert (tmp_path / "c.parquet").read_bytes() == body


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    body = b"z" * 5000 + b"PAR1"
    server.files["/d.parquet"] = body
    server.faults["/d.parquet"] = ["norange"]
    (tmp_path / "d.parquet.part").write_bytes(b"GARBAGE")
    download_file(f"{server.url}/d.parquet", tmp_path / "d.parquet", retries=0)
    assert (tmp_path / "d.parquet").read_bytes() == body


def test_transient_error_is_retried(server, tmp_path):
    server.files["/e.parquet"] = b"e" * 100 + b"PAR1"
    server.faults["/e.parquet"] = ["fail", "fail"]
    lines = []
    download_files([(f"{server.url}/e.parquet", tmp_path / "e.parquet")], retries=2, backoff=FAST,
                   log=lines.append)
    assert (tmp_path / "e.parquet").read_bytes() == server.files["/e.parquet"]
    assert len(server.ranges("/e.parquet")) == 3
    assert sum("retry" in line for line in lines) == 2


def test_retries_exhausted_raises_and_leaves_no_file(server, tmp_path):
    server.files["/f.parquet"] = b"f" * 10
    server.faults["/f.parquet"] = ["fail"] * 10
    with pytest.raises(DownloadError, match="f.parquet"):
        download_files([(f"{server.url}/f.parquet", tmp_path / "f.parquet")], retries=2, backoff=FAST,
                       log=lambda *a: None)
    assert len(server.ranges("/f.parquet")) == 3
    assert not (tmp_path / "f.parquet").exists()


def test_missing_file_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        download_file(f"{server.url}/nope.parquet", tmp_path / "nope.parquet", retries=5, backoff=FAST)
    assert len(server.ranges("/nope.parquet")) == 1


def test_truncated_parquet_is_rejected_and_refetched(server, tmp_path):
    body = parquet_bytes(tmp_path, ["hello world"] * 10)
    server.files["/g.parquet"] = body
    (tmp_path / "g.parquet.part").write_bytes(body)            # looks complete (416) ...
    server.files["/g.parquet"] = body + b"tail-not-parquet"     # ... but the real file differs
    with pytest.raises(DownloadError):
        download_file(f"{server.url}/g.parquet", tmp_path / "g.parquet", retries=1, backoff=FAST)
    assert not (tmp_path / "g.parquet").exists()


def test_parallel_downloads_with_faults(server, tmp_path):
    jobs = []
    for i in range(6):
        server.files[f"/p{i}.parquet"] = bytes([i]) * (20_000 + i) + b"PAR1"
        server.faults[f"/p{i}.parquet"] = ["cut"] if i % 2 else ["fail"]
        jobs.append((f"{server.url}/p{i}.parquet", tmp_path / "par" / f"p{i}.parquet"))
    lines = []
    download_files(jobs, workers=4, retries=2, backoff=FAST, log=lines.append)
    for i, (_, dest) in enumerate(jobs):
        assert dest.read_bytes() == server.files[f"/p{i}.parquet"]
    assert not list((tmp_path / "par").glob("*.part"))
    assert "6/6 files" in lines[-1]
    n_requests = len(server.requests)
    download_files(jobs, workers=4, log=lines.append)            # all present: nothing fetched
    assert len(server.requests) == n_requests


def test_prepare_climbmix_from_local_server(server, tmp_path):
    from judge.prepare import prepare
    train = {i: [f"Shard {i} training document {j}. " + "The quick brown fox jumps. " * (20 + j % 7)
                 for j in range(60)] for i in range(2)}
    val = [f"Validation document {j}. " + "A lazy dog sleeps in the sun. " * 25 for j in range(30)]
    for i, texts in train.items():
        server.files[f"/{shard_name(i)}"] = parquet_bytes(tmp_path, texts, f"t{i}.parquet")
    server.files[f"/{shard_name(6542)}"] = parquet_bytes(tmp_path, val, "v.parquet")
    server.faults[f"/{shard_name(1)}"] = ["cut"]
    cfg = DataConfig(corpus="climbmix", climbmix_url=server.url + "/", climbmix_shards=2, vocab_size=300,
                     cache_dir=str(tmp_path / "cache"), download_workers=3, download_retries=2)
    spec = prepare(cfg, log=lambda *a: None)
    assert spec.n_train_docs == 120 and spec.n_val_docs == 30
    got_val = pq.read_table(Path(spec.data_dir) / "corpus" / "val").column("text").to_pylist()
    assert got_val == val
    assert sorted(p for p, _ in server.requests) == sorted(
        ["/shard_00000.parquet", "/shard_00001.parquet", "/shard_00001.parquet", "/shard_06542.parquet"])
