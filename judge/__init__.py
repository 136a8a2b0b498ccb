"""The fixed judge: data, tokenizer, token cache, training loader, val_bpb evaluation and verdicts.

Nothing here imports trainer or orchestrator, and nothing here trusts numbers a candidate reports."""
