"""Adopted-protocol test candidate: its model mixes in the embedding of the NEXT token (looks ahead) -> invalid."""
import torch
import torch.nn.functional as F

from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb

DIM = 16


class PeekNext(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, DIM)
        self.head = torch.nn.Linear(2 * DIM, vocab)

    def forward(self, idx, targets=None):
        x = self.emb(idx)
        logits = self.head(torch.cat([x, F.pad(x[:, 1:], (0, 0, 0, 1))], dim=-1))
        return logits if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())


tokenizer = Tokenizer.from_directory()
model = PeekNext(tokenizer.get_vocab_size())
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
loader = make_dataloader(tokenizer, 2, MAX_SEQ_LEN, "train")
for step in range(3):
    x, y, epoch = next(loader)
    model(x, y).backward()
    optimizer.step()
    optimizer.zero_grad()
print(f"val_bpb: {evaluate_bpb(model, tokenizer, 2)}")
