"""The `prepare` module an adopted script imports inside a trial (the sandbox binds it as sys.modules['prepare']):
popsearch's training batches, the trial's budget, the prepared tokenizer, and evaluate_bpb as the hand-off.

The clock starts at the script's second training batch (CLOCK_START_BATCH); the model is handed over at
evaluate_bpb or at the last batch asked for before the budget is spent, whichever comes first (_batches)."""
from __future__ import annotations

import os
import sys

from judge.adopted import TRAIN_SPLIT, module_models, plain_module
from judge.loader import TrainingBatches
from judge.tokenizer import BOS, load_encoding
from trainer.harness import Trial
from trainer.spec import ENV_SEQ_LEN

# The first batch is served before the clock starts: an upstream loop fetches it before its first step and asks
# for the second right after that step's forward and backward, where torch.compile builds the model's graphs.
# Native candidates warm up (compile) before trial.start() likewise; the start-up allowance bounds this phase.
CLOCK_START_BATCH = 2
NOT_A_SCORE = float("nan")      # what evaluate_bpb returns: popsearch's judge scores the model, not the script

MAX_SEQ_LEN = 0                 # the judge's seq_len, set by bind()
TIME_BUDGET = 0.0               # the trial's normalized budget in seconds, set by bind()
_state: dict = {}


class AdoptedTrial(Trial):
    """A Trial whose model is the one handed to evaluate_bpb (it may differ from what start() counted)."""

    finished = False

    def finish_with(self, model) -> None:
        """The finish event with `model`'s weights, once (later calls change nothing that is judged)."""
        if not self.finished:
            self.finished = True
            self._model = plain_module(model)
            self.finish(backend="adopted")


def bind(data_dir: str, record_violation) -> None:
    """Called by the sandbox while the process is trusted: settings, the tokenizer, the violation recorder."""
    global MAX_SEQ_LEN, TIME_BUDGET
    trial = AdoptedTrial()
    MAX_SEQ_LEN = int(os.environ.get(ENV_SEQ_LEN, "0")) or 256
    TIME_BUDGET = float(trial.budget_seconds)
    try:
        encoding = load_encoding(data_dir)
    except FileNotFoundError:
        encoding = None
    _state.update(trial=trial, encoding=encoding, record=record_violation, batches=0, started=False)


class Tokenizer:
    """The prepared BPE tokenizer (judge/tokenizer.py) under the names an upstream script calls."""

    def __init__(self, encoding):
        self.encoding = encoding
        self.bos_id = encoding.encode_single_token(BOS)

    @classmethod
    def from_directory(cls, *args, **kwargs) -> "Tokenizer":
        if _state.get("encoding") is None:
            raise FileNotFoundError("no prepared tokenizer for this trial (run `popsearch prepare`)")
        return cls(_state["encoding"])

    def get_vocab_size(self) -> int:
        return self.encoding.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_id

    def encode(self, text, prepend=None, *args, **kwargs):
        one = isinstance(text, str)
        rows = [self.encoding.encode_ordinary(t) for t in ([text] if one else text)]
        if prepend is not None:
            first = prepend if isinstance(prepend, int) else self.encoding.encode_single_token(prepend)
            rows = [[first, *row] for row in rows]
        return rows[0] if one else rows

    def decode(self, ids) -> str:
        return self.encoding.decode(list(ids))


def make_dataloader(tokenizer, batch_size: int, seq_len: int, split: str = TRAIN_SPLIT, *args, **kwargs):
    """(inputs, targets, epoch) batches of popsearch's training loader; any split but 'train' is a violation."""
    if split != TRAIN_SPLIT:
        _state["record"](f"asks make_dataloader for the {split!r} split (only {TRAIN_SPLIT!r} is open to a trial)")
    trial = _state["trial"]
    return _batches(TrainingBatches(int(batch_size), int(seq_len), device=trial.device, seed=trial.seed), trial)


def _batches(loader: TrainingBatches, trial: AdoptedTrial):
    """The loader's batches; the budget is the runner's, not the script's own clock (which may leave out its
    first steps): at the last batch asked for before the budget is spent (judged by the progress made between
    the two batches before), the script's model is handed over (the finish event), so what it trains after
    that, until its own clock stops it, is not judged."""
    tokens = loader.batch_size * loader.seq_len
    for inputs, targets in loader:
        _state["batches"] += 1
        if _state["batches"] >= CLOCK_START_BATCH and not trial.finished:
            _start_clock(trial)
            progress = trial.progress()
            if progress + (progress - _state.get("progress", 0.0)) >= 1.0:   # the next batch would be past it
                trial.finish_with(_script_model())
            else:
                _state["progress"] = progress
                trial.step(tokens)
        yield inputs, targets, loader.epoch


def _script_model():
    """The first nn.Module bound at the script's top level (torch.compile unwrapped), or None."""
    main = sys.modules.get("__main__")
    models = module_models(vars(main)) if main is not None else []
    return models[0] if models else None


def _start_clock(trial: AdoptedTrial) -> None:
    if not _state["started"]:
        _state["started"] = True
        trial.start(_script_model())


def evaluate_bpb(model, *args, **kwargs) -> float:
    """Hand the model to popsearch's judge (the finish event); returns NaN: the judge's val_bpb is the score."""
    trial = _state["trial"]
    _start_clock(trial)
    trial.finish_with(model)
    return NOT_A_SCORE
