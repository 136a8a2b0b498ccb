"""Read and rewrite the hyperparameter constants block of a train.py, keeping its formatting.

Constants are module-level `UPPER_CASE = literal` assignments between the two marker comments."""
from __future__ import annotations

import ast

from judge.source_tree import parsed

START_MARKER = "# --- hyperparameters ---"
END_MARKER = "# --- end hyperparameters ---"
LITERAL_TYPES = (bool, int, float, str, tuple, list)


def _is_constant_name(name: str) -> bool:
    return name.isupper() and (name[0].isalpha() or name[0] == "_")


def _marker_lines(source: str) -> tuple[int, int] | None:
    """1-based lines of the start and end markers, or None when the file has no start marker."""
    start = end = None
    for number, line in enumerate(source.splitlines(), start=1):
        text = line.strip()
        if start is None and text.startswith(START_MARKER):
            start = number
        elif start is not None and text.startswith(END_MARKER):
            end = number
            break
    if start is None:
        return None
    if end is None:
        raise ValueError(f"train.py line {start}: '{START_MARKER}' has no matching '{END_MARKER}'")
    return start, end


def _literal(node: ast.expr):
    """The literal value of an expression, or a sentinel when it is not a plain literal."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL
    if not isinstance(value, LITERAL_TYPES):
        return _NOT_LITERAL
    if isinstance(value, (tuple, list)) and not all(isinstance(v, LITERAL_TYPES) for v in value):
        return _NOT_LITERAL
    return value


_NOT_LITERAL = object()


def _constant_nodes(source: str) -> list[tuple[str, ast.expr, object]]:
    """(name, value node, value) for every constant assignment in the block, in source order."""
    tree = parsed(source)
    span = _marker_lines(source)
    found = []
    for stmt in tree.body:
        if span is not None and not (span[0] < stmt.lineno < span[1]):
            continue
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value_node = stmt.targets[0], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target, value_node = stmt.target, stmt.value
        else:
            continue
        if not (isinstance(target, ast.Name) and _is_constant_name(target.id)):
            continue
        value = _literal(value_node)
        if value is not _NOT_LITERAL:
            found.append((target.id, value_node, value))
    return found


def read_constants(source: str) -> dict:
    """{name: value} of the constants block (all module-level constants if the markers are absent)."""
    return {name: value for name, _, value in _constant_nodes(source)}


def constants_span(source: str) -> tuple[int, int]:
    """1-based (first_line, last_line) of the block: the marker lines, inclusive; without markers,
    the first and last constant assignment."""
    span = _marker_lines(source)
    if span is not None:
        return span
    nodes = _constant_nodes(source)
    if not nodes:
        raise ValueError("train.py: no constants block and no module-level UPPER_CASE constants")
    return nodes[0][1].lineno, max(node.end_lineno for _, node, _ in nodes)


def _coerce(name: str, old, new):
    """The override converted to the constant's type, or ValueError naming the constant."""
    def bad():
        return ValueError(f"constant {name}: override {new!r} ({type(new).__name__}) does not match "
                          f"its type {type(old).__name__} (current value {old!r})")
    if isinstance(old, bool) or isinstance(new, bool):
        if type(old) is not type(new):
            raise bad()
        return new
    if isinstance(old, float) and isinstance(new, (int, float)):
        return float(new)
    if isinstance(old, (tuple, list)) and isinstance(new, (tuple, list)):
        if not all(isinstance(v, LITERAL_TYPES) for v in new):
            raise bad()
        return type(old)(new)
    if type(old) is not type(new):
        raise bad()
    return new


def _check_roundtrip(name: str, value) -> str:
    """The literal text of a value; ValueError when it would not read back as the same literal."""
    text = repr(value)
    try:
        same = ast.literal_eval(text) == value
    except (ValueError, SyntaxError):
        same = False
    if not same:
        raise ValueError(f"constant {name}: value {value!r} cannot be written as a plain literal")
    return text


def _byte_offsets(source: bytes) -> list[int]:
    """Byte offset of the start of each 1-based line (index 0 unused)."""
    offsets = [0, 0]
    for line in source.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    return offsets


def apply_overrides(source: str, overrides: dict) -> str:
    """The source with the named constants set to new values; only the value text changes."""
    nodes = _constant_nodes(source)
    known = {name: value for name, _, value in nodes}
    for name in overrides:
        if name not in known:
            raise KeyError(f"constant {name!r} is not in the constants block of train.py; "
                           f"known constants: {', '.join(sorted(known))}")
    new_values = {name: _coerce(name, known[name], value) for name, value in overrides.items()}
    data = source.encode("utf-8")
    lines = _byte_offsets(data)
    edits = []
    for name, node, _ in nodes:
        if name in new_values:
            begin = lines[node.lineno] + node.col_offset
            end = lines[node.end_lineno] + node.end_col_offset
            text = _check_roundtrip(name, new_values[name])
            edits.append((begin, end, text.encode("utf-8")))
    for begin, end, text in sorted(edits, reverse=True):
        data = data[:begin] + text + data[end:]
    result = data.decode("utf-8")
    parsed(result)                 # it still parses (and the readers after this find it parsed)
    return result
