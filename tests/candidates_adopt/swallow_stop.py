"""Adopted-protocol test candidate: catches the judge's stop at make_dataloader and runs on -> invalid."""
import torch

from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb

tokenizer = Tokenizer.from_directory()
model = torch.nn.Embedding(tokenizer.get_vocab_size(), tokenizer.get_vocab_size())
try:
    loader = make_dataloader(tokenizer, 2, MAX_SEQ_LEN, "train")
except BaseException:
    loader = None
print(f"val_bpb: {evaluate_bpb(model, tokenizer, 2) if loader else 0.0}")
