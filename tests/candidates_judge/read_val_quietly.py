"""Judge test candidate: tries to open the validation tokens, swallows the refusal and carries on -> invalid."""
import os
import sys

import torch

try:
    data_dir = sys.argv[sys.argv.index("--data-dir") + 1]
    with open(os.path.join(data_dir, "val", "tokens.bin"), "rb") as f:
        STOLEN = f.read()
except Exception:
    STOLEN = b""


def build_model():
    from judge.loader import data_info
    return torch.nn.Embedding(data_info()["vocab_size"], data_info()["vocab_size"])
