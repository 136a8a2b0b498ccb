"""The identity of a train.py text: git's blob id of its bytes, computed without git.

Pure (hashlib only), so the population state machine and the archive share one definition."""
from __future__ import annotations

import hashlib


def source_hash(source: str) -> str:
    """git's blob id of a train.py text: equal exactly for byte-identical candidates, readable from any commit."""
    data = source.encode("utf-8")
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
