"""Judge test candidate: opens the validation tokens at import (the judge's data dir is in its argv) -> invalid."""
import os
import sys

import torch

data_dir = sys.argv[sys.argv.index("--data-dir") + 1]
with open(os.path.join(data_dir, "val", "tokens.bin"), "rb") as f:
    STOLEN = f.read()


def build_model():
    return torch.nn.Embedding(8, 8)
