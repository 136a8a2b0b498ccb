"""One parse of a train.py source shared by every reader that only looks at its tree (protocol, validation,
the constants block, the static check): a candidate is parsed once, not once per reader.

The tree is cached by the source text: callers read it and never change it (copy it, or parse afresh, to edit)."""
from __future__ import annotations

import ast
import functools


@functools.lru_cache(maxsize=64)
def parsed(source: str | bytes) -> ast.Module:
    """ast.parse(source), cached; SyntaxError (and ValueError for a NUL byte) as ast.parse raises them."""
    return ast.parse(source)
