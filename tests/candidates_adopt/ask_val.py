"""Adopted-protocol test candidate: asks make_dataloader for the validation split -> invalid (sandbox)."""
import torch

from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb

tokenizer = Tokenizer.from_directory()
model = torch.nn.Embedding(tokenizer.get_vocab_size(), tokenizer.get_vocab_size())
try:
    val = make_dataloader(tokenizer, 2, MAX_SEQ_LEN, "val")
except BaseException:
    pass
train = make_dataloader(tokenizer, 2, MAX_SEQ_LEN, "train")
for _ in range(3):
    x, y, epoch = next(train)
print(f"val_bpb: {evaluate_bpb(model, tokenizer, 2)}")
