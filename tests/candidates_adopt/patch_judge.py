"""Adopted-protocol test candidate: replaces log_softmax at top level (a perfect-looking loss) -> invalid."""
import torch
import torch.nn.functional as F

from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb

F.log_softmax = lambda x, dim=-1, *args, **kwargs: torch.zeros_like(x)
torch.log_softmax = F.log_softmax

tokenizer = Tokenizer.from_directory()
model = torch.nn.Embedding(tokenizer.get_vocab_size(), tokenizer.get_vocab_size())
loader = make_dataloader(tokenizer, 2, MAX_SEQ_LEN, "train")
x, y, epoch = next(loader)
print(f"val_bpb: {evaluate_bpb(model, tokenizer, 2)}")
