"""What goes into one trial (TrialSpec) and what comes out (TrialResult).

Both are plain dataclasses that travel through Ray and into the ledger as dicts."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from judge.spec import ENV_KERNEL_DIR  # noqa: F401  (a local FA3 kernel repo; defined beside the judge's KERNEL_ENV)

STATUSES = ("ok", "crash", "timeout", "invalid", "stopped", "infra")

# Environment variables the runner hands to a trial process (read by trainer/harness.py).
ENV_BUDGET_KIND = "POPSEARCH_BUDGET_KIND"        # "time" or "flops"
ENV_BUDGET_SECONDS = "POPSEARCH_BUDGET_SECONDS"  # training seconds (time mode)
ENV_BUDGET_FLOPS = "POPSEARCH_BUDGET_FLOPS"      # model FLOPs to train for (flops mode)
ENV_DEVICE = "POPSEARCH_DEVICE"                  # "cuda" or "cpu"
ENV_SEED = "POPSEARCH_SEED"
ENV_EVENTS_FD = "POPSEARCH_EVENTS_FD"            # trial -> runner: JSON lines (start, progress, finish)
ENV_GO_FD = "POPSEARCH_GO_FD"                    # runner -> trial: one byte when the device is free
ENV_THREADS = "POPSEARCH_THREADS"                # CPU threads for torch in CPU mode
ENV_ATTENTION = "POPSEARCH_ATTENTION"            # fa3 | flex | sdpa: skip the backend chain (trainer/attention.py)
ENV_SEQ_LEN = "POPSEARCH_SEQ_LEN"                # judge.seq_len: MAX_SEQ_LEN of an adopted script (trainer/adopted.py)
ATTENTION_BACKENDS = ("fa3", "flex", "sdpa")


@dataclass
class BudgetConfig:
    """The training budget of a trial (a config section)."""
    kind: str = "time"                   # time | flops
    seconds: float = 300.0               # reference budget in time mode (on the reference device)
    flops: float = 0.0                   # model FLOPs per trial in flops mode
    reference_speed: float = 0.0         # device speed that `seconds` refers to; 0 = cluster median
    startup_allowance: float = 0.0       # seconds allowed before training starts; 0 = measured per device
    startup_floor: float = 60.0          # never allow less than this for start-up
    finish_allowance: float = 30.0       # seconds from the finish event to the trial's exit
    overrun_tolerance: float = 0.05      # training may exceed the budget by this fraction


@dataclass
class TrialSpec:
    """Everything the runner needs to run and judge one candidate."""
    trial_id: str
    source: str                          # the candidate train.py, as text
    data_dir: str                        # prepared data (DataSpec); the trial sees only its train/ folder
    budget_kind: str = "time"
    budget_seconds: float = 10.0         # normalized budget given to this trial (time mode)
    budget_flops: float = 0.0            # flops mode
    device: str = "cpu"                  # cpu | cuda
    gpu_index: str | None = None         # value for CUDA_VISIBLE_DEVICES
    seed: int = 0
    threads: int = 1                     # CPU threads (CPU mode)
    startup_allowance: float = 120.0     # seconds before training must start
    finish_allowance: float = 30.0
    overrun_tolerance: float = 0.05
    scratch_root: str = ""               # '' -> a temp folder
    keep_scratch: bool = False
    compile_scope: str = ""              # sub-folder of the node's compile cache ('' = the whole node shares one)
    log_cap_bytes: int = 4_000_000       # the trial's log is cut beyond this
    # judge settings (JudgeConfig fields, copied so the spec is self-contained)
    seq_len: int = 256
    eval_tokens: int = 32768
    eval_batch: int = 8
    probe_positions: int = 4
    judge_timeout: float = 600.0
    # early stopping: parent's loss curve as [(progress fraction, loss)], empty = off
    parent_curve: list = field(default_factory=list)
    early_stop_margin: float = 0.0       # stop when loss > parent's loss * (1 + margin) past min_progress
    early_stop_min_progress: float = 0.3
    wait_for_go: bool = False            # overlap: block before training until the runner says go
    operator_env: dict = field(default_factory=dict)   # trainer.trial_env.OPERATOR_ENV settings for trial and judge

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrialResult:
    """The runner's and judge's account of one trial. Only val_bpb and the runner's clocks are trusted."""
    trial_id: str
    status: str                          # one of STATUSES
    reason: str = ""                     # why, for every status but ok
    val_bpb: float | None = None         # from the judge
    val_loss: float | None = None        # mean nats per token, from the judge
    training_seconds: float = 0.0        # runner's clock: start event to finish event
    startup_seconds: float = 0.0         # runner's clock: launch to ready event (overlap) or start event
    judge_seconds: float = 0.0
    total_seconds: float = 0.0
    budget_seconds: float = 0.0
    budget_kind: str = "time"
    params: int = 0                      # counted by the judge
    peak_vram_mb: float = 0.0            # reported by the trial (informational)
    tokens: int = 0                      # reported by the trial (informational)
    steps: int = 0                       # reported by the trial (informational)
    flops_per_token: float | None = None # reported by the trial (trainer/flops.py's formula, informational)
    mfu: float | None = None             # flops_per_token x tokens / training seconds / device peak
    backend: str = ""                    # attention backend the trial used
    device: str = ""                     # device name, e.g. "NVIDIA H100 80GB HBM3" or "cpu"
    seed: int = 0
    loss_curve: list = field(default_factory=list)   # [(progress, loss)] as reported
    timeline: dict = field(default_factory=dict)     # wall-clock stamps: launch, ready, go, start, finish, judge_start, judge_end
    log_tail: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrialResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
