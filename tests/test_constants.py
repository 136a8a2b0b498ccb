"""Tests of trainer.constants: reading and rewriting the constants block of a train.py.

Pure text in, text out; the baseline train.py is checked too when it exists."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from trainer.constants import apply_overrides, constants_span, read_constants

SOURCE = '''"""A candidate."""
import math

LOOKS_LIKE = 1  # outside the block: ignored when the markers exist

# --- hyperparameters ---
DEPTH = 4          # layers
MODEL_DIM = 256    # width
MATRIX_LR = 0.02   # Muon
WINDOW_PATTERN = "SSSL"  # short/long
COMPILE = True
BETAS = (0.8, 0.95)
NEG = -3
NAME: str = "café"   # non-ASCII before a value on the same line: positions are bytes
SCHEDULE = [
    0.1,   # warmup
    0.5,   # cooldown
]
derived = DEPTH * 2
NOT_LITERAL = math.sqrt(2)
# --- end hyperparameters ---

def build_model():
    return DEPTH
'''


def test_read_constants_block_only():
    got = read_constants(SOURCE)
    assert got == {"DEPTH": 4, "MODEL_DIM": 256, "MATRIX_LR": 0.02, "WINDOW_PATTERN": "SSSL",
                   "COMPILE": True, "BETAS": (0.8, 0.95), "NEG": -3, "NAME": "café",
                   "SCHEDULE": [0.1, 0.5]}


def test_read_constants_without_markers_takes_all_module_constants():
    source = "A = 1\nB_C = 'x'\nlower = 2\nD = f(1)\ndef f():\n    E = 3\n"
    assert read_constants(source) == {"A": 1, "B_C": "x"}


def test_apply_overrides_changes_values_and_keeps_comments():
    out = apply_overrides(SOURCE, {"DEPTH": 8, "MATRIX_LR": 0.05, "WINDOW_PATTERN": "L",
                                   "COMPILE": False, "BETAS": [0.9, 0.99], "NAME": "ü",
                                   "SCHEDULE": (0.2, 0.3)})
    got = read_constants(out)
    assert got["DEPTH"] == 8 and got["MATRIX_LR"] == 0.05 and got["WINDOW_PATTERN"] == "L"
    assert got["COMPILE"] is False and got["BETAS"] == (0.9, 0.99) and got["NAME"] == "ü"
    assert got["SCHEDULE"] == [0.2, 0.3] and got["MODEL_DIM"] == 256
    assert "DEPTH = 8          # layers" in out
    assert "MATRIX_LR = 0.05   # Muon" in out
    assert 'NAME: str = \'ü\'   # non-ASCII' in out
    assert "derived = DEPTH * 2" in out and "LOOKS_LIKE = 1  # outside" in out
    # only the changed values differ: same number of lines apart from the collapsed list
    assert len(out.splitlines()) == len(SOURCE.splitlines()) - 3
    ast.parse(out)


def test_apply_overrides_int_for_float_is_written_as_float():
    out = apply_overrides(SOURCE, {"MATRIX_LR": 1})
    assert read_constants(out)["MATRIX_LR"] == 1.0
    assert isinstance(read_constants(out)["MATRIX_LR"], float)


def test_apply_overrides_no_change_is_identity():
    assert apply_overrides(SOURCE, {}) == SOURCE


def test_unknown_constant_names_it_and_lists_known():
    with pytest.raises(KeyError) as err:
        apply_overrides(SOURCE, {"DEPHT": 3})
    text = str(err.value)
    assert "DEPHT" in text and "DEPTH" in text and "MODEL_DIM" in text


def test_constant_outside_block_is_unknown():
    with pytest.raises(KeyError, match="LOOKS_LIKE"):
        apply_overrides(SOURCE, {"LOOKS_LIKE": 2})


@pytest.mark.parametrize("name,value", [("DEPTH", "4"), ("DEPTH", 4.5), ("COMPILE", 1),
                                        ("DEPTH", True), ("WINDOW_PATTERN", 3),
                                        ("MATRIX_LR", float("inf")), ("BETAS", "ab")])
def test_type_change_raises_value_error_naming_constant(name, value):
    with pytest.raises(ValueError, match=name):
        apply_overrides(SOURCE, {name: value})


def test_constants_span_is_the_marker_lines():
    lines = SOURCE.splitlines()
    first, last = constants_span(SOURCE)
    assert lines[first - 1] == "# --- hyperparameters ---"
    assert lines[last - 1] == "# --- end hyperparameters ---"


def test_constants_span_without_markers():
    assert constants_span("import os\nA = 1\nx = 2\nB = [\n 1,\n]\n") == (2, 6)
    with pytest.raises(ValueError):
        constants_span("x = 1\n")


def test_missing_end_marker_is_an_error():
    with pytest.raises(ValueError, match="end hyperparameters"):
        read_constants("# --- hyperparameters ---\nA = 1\n")


def test_baseline_train_py_roundtrip(tiny_overrides):
    path = Path(__file__).resolve().parents[1] / "trainer" / "train.py"
    source = path.read_text()
    out = apply_overrides(source, tiny_overrides)
    got = read_constants(out)
    for name, value in tiny_overrides.items():
        assert got[name] == value
    first, last = constants_span(out)
    assert first < last
