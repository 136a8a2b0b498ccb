"""The one popsearch config: nested dataclasses with defaults, loaded from YAML, validated at start.

Every error names the file and the dotted key that is wrong; nothing starts on a bad config."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from judge.spec import DataConfig, JudgeConfig
from trainer.spec import BudgetConfig

PROPOSERS = ("mutate", "agent", "inbox")
YAML_SWITCHES = ("resources.overlap",)
# Keys of older configs (and of archives' saved config.yaml) that are read and ignored: the sequential
# verdict rule (selection.alpha and the rest) replaced the fixed or seed-spread margin.
RETIRED_KEYS = ("selection.margin", "selection.margin_std")     # str keys whose values on/off YAML turns into booleans

# The built-in default is the CPU demo: the baseline train.py shrunk by these overrides
# (configs/demo.yaml spells the same values out; a test keeps the two equal).
DEMO_OVERRIDES = {
    "DEPTH": 2, "MODEL_DIM": 64, "N_HEADS": 2, "SEQ_LEN": 64, "DEVICE_BATCH_SIZE": 8,
    "TOTAL_BATCH_SIZE": 512, "SHORT_WINDOW": 32, "COMPILE": False,
}


class ConfigError(ValueError):
    """A config file that popsearch refuses to start with."""


@dataclass
class PopulationConfig:
    size: int = 4                        # members kept alive at once
    seed_train_py: str = ""              # '' = trainer/train.py shipped with popsearch
    overrides: dict = field(default_factory=lambda: dict(DEMO_OVERRIDES))  # rewritten into the seed at creation


@dataclass
class ProposerConfig:
    weights: dict = field(default_factory=lambda: {"mutate": 1.0})  # proposer -> share of proposals
    mutate_changes: int = 2              # a mutation changes 1..this many constants
    agent_command: str = ""              # template with {workdir} {program} {history}
    agent_concurrency: int = 2           # agents running at once
    agent_timeout: float = 900.0         # seconds before an agent is killed
    program: str = "program.md"          # the research brief handed to agents (path)
    inbox_dir: str = ""                  # '' = ARCHIVE/inbox
    queue_depth: int = 0                 # ready candidates kept ahead; 0 = 2 x actors


@dataclass
class SelectionConfig:
    noise_seeds: int = 3                 # runs of the seed at creation: its score and the first σ
    effect_sigmas: float = 1.0           # the SPRT's H1: a win of this many σ (H0: no effect)
    alpha: float = 0.3                   # the SPRT's nominal false-clear rate (confirmation cuts it further)
    beta: float = 0.6                    # the SPRT's nominal miss rate at effect_sigmas
    max_runs: int = 2                    # selection runs of a candidate at most
    confirm_runs: int = 3                # fresh runs of a cleared candidate: they alone score the new head
    confirm_bar: float = 1.5             # promote when all the candidate's runs give z <= -confirm_bar
    head_runs: int = 4                   # runs a head gets on a device kind before candidates compare with it
    confirm_head_runs: int = 10          # runs the head gets there before a confirmation is decided
    cull_every: int = 8                  # finished trials between culls
    cull_fraction: float = 0.25          # share of members retired at a cull
    patience: int = 4                    # trials without improvement before a member may be retired
    early_stop_margin: float = 0.0       # > 0: stop a trial whose loss is this much worse than its parent's
    early_stop_min_progress: float = 0.3


@dataclass
class StopConfig:
    max_trials: int = 0                  # finished trials in the archive; 0 = no limit
    max_wall_seconds: float = 0.0        # of this driver run; 0 = no limit


@dataclass
class ResourcesConfig:
    device: str = "auto"                 # auto | cuda | cpu
    cpu_slots: int = 0                   # CPU mode: trial actors; 0 = one per 2 x threads_per_trial cores
    threads_per_trial: int = 1           # CPU mode: torch threads of a trial
    max_retries: int = 2                 # re-dispatches of a trial lost to an infrastructure failure
    overlap: str = "auto"                # on: trial k+1 starts up while k trains; auto: on for GPUs, and on CPU
                                         # where each slot has a spare core for the start-up and the judge
    compile_cache: str = "member"        # torch.compile cache shared by: member (its trials only) | node (all)
    keep_scratch: bool = False
    log_cap_bytes: int = 4_000_000


@dataclass
class Config:
    archive: str = "runs/demo"           # the population's git archive and ledger
    seed: int = 0                        # the driver's random seed (proposals, selection)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(seconds=8.0, startup_floor=30.0,
                                                                      finish_allowance=30.0))
    data: DataConfig = field(default_factory=DataConfig)
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(seq_len=128, eval_tokens=16384))
    proposers: ProposerConfig = field(default_factory=ProposerConfig)
    selection: SelectionConfig = field(default_factory=lambda: SelectionConfig(patience=2, head_runs=3,
                                                                               confirm_head_runs=4))
    stop: StopConfig = field(default_factory=lambda: StopConfig(max_trials=16))
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    source: str = ""                     # the file this config came from (set by load)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d


def load(path: str | Path | None = None) -> Config:
    """Read a YAML config and validate it; no path gives the built-in default (the CPU demo)."""
    if path is None:
        cfg = Config(source="<built-in demo>")
        validate(cfg, where=cfg.source)
        return cfg
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    cfg = from_dict(raw, where=str(path))
    cfg.source = str(path)
    validate(cfg, where=str(path))
    return cfg


def from_dict(raw: dict, where: str = "<dict>") -> Config:
    return _build(Config, _budget_value(raw, where), where, prefix="")


def _budget_value(raw: dict, where: str) -> dict:
    """`budget: {kind: flops, value: N}` (or kind time) is shorthand for budget.flops / budget.seconds."""
    budget = raw.get("budget")
    if not isinstance(budget, dict) or "value" not in budget:
        return raw
    budget = dict(budget)
    key = "flops" if budget.get("kind") == "flops" else "seconds"
    if key in budget:
        raise ConfigError(f"{where}: keys 'budget.value' and 'budget.{key}' say the same thing; keep one")
    budget[key] = budget.pop("value")
    return {**raw, "budget": budget}


def _build(cls, raw: dict, where: str, prefix: str):
    hints = typing.get_type_hints(cls)
    raw = {k: v for k, v in raw.items() if prefix + k not in RETIRED_KEYS}
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"{where}: unknown key '{key}' (known keys here: {', '.join(sorted(known))})")
    values = {}
    for name, value in raw.items():
        key = prefix + name
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: key '{key}' must be a mapping, got {value!r}")
            values[name] = _build(kind, value, where, prefix=key + ".")
        else:
            if kind is str and isinstance(value, bool) and key in YAML_SWITCHES:
                value = "on" if value else "off"        # YAML reads a bare on/off as a boolean
            values[name] = _coerce(value, kind, where, key)
    return cls(**values)


def _coerce(value, kind, where: str, key: str):
    origin = typing.get_origin(kind)
    if origin is typing.Union or str(kind).startswith("str | None"):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        kind = args[0]
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    elif kind is dict or typing.get_origin(kind) is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        return value
    raise ConfigError(f"{where}: key '{key}' must be {kind.__name__}, got {value!r} ({type(value).__name__})")


def validate(cfg: Config, where: str = "<config>") -> None:
    """Range and consistency checks; raises ConfigError naming the key."""
    def need(ok: bool, key: str, what: str):
        if not ok:
            raise ConfigError(f"{where}: key '{key}' {what}")

    need(cfg.population.size >= 1, "population.size", "must be at least 1")
    need(cfg.budget.kind in ("time", "flops"), "budget.kind", "must be 'time' or 'flops'")
    need(cfg.budget.seconds > 0, "budget.seconds", "must be > 0")
    need(cfg.budget.kind != "flops" or cfg.budget.flops > 0, "budget.flops", "must be > 0 when budget.kind is flops")
    need(cfg.budget.reference_speed >= 0, "budget.reference_speed", "must be >= 0")
    need(cfg.data.vocab_size >= 260, "data.vocab_size", "must be at least 260 (256 bytes + specials)")
    corpus = cfg.data.corpus
    need(corpus in ("builtin", "climbmix") or corpus.startswith("local:"), "data.corpus",
         f"must be builtin, climbmix or local:PATH, got {corpus!r}")
    need(cfg.judge.seq_len >= 8, "judge.seq_len", "must be at least 8")
    need(cfg.judge.eval_tokens >= cfg.judge.seq_len, "judge.eval_tokens", "must be at least judge.seq_len")
    need(cfg.judge.eval_batch >= 1, "judge.eval_batch", "must be at least 1")
    bad = sorted(set(cfg.proposers.weights) - set(PROPOSERS))
    need(not bad, "proposers.weights", f"names unknown proposers {bad} (known: {', '.join(PROPOSERS)})")
    need(all(isinstance(w, (int, float)) and w >= 0 for w in cfg.proposers.weights.values()),
         "proposers.weights", "must map proposer names to weights >= 0")
    need(sum(cfg.proposers.weights.values()) > 0, "proposers.weights", "must give some proposer a weight > 0")
    need(cfg.proposers.weights.get("agent", 0) == 0 or bool(cfg.proposers.agent_command.strip()),
         "proposers.agent_command", "must be set when proposers.weights.agent > 0")
    need(cfg.proposers.agent_concurrency >= 1, "proposers.agent_concurrency", "must be at least 1")
    need(cfg.proposers.agent_timeout > 0, "proposers.agent_timeout", "must be > 0")
    need(cfg.proposers.mutate_changes >= 1, "proposers.mutate_changes", "must be at least 1")
    need(0 < cfg.selection.cull_fraction < 1, "selection.cull_fraction", "must be between 0 and 1")
    sel = cfg.selection
    need(1 <= sel.max_runs <= 100, "selection.max_runs", "must be between 1 and 100")
    need(0 <= sel.confirm_runs <= 100, "selection.confirm_runs", "must be between 0 and 100")
    need(1 <= sel.noise_seeds <= 100, "selection.noise_seeds", "must be between 1 and 100 (the baseline runs)")
    need(1 <= sel.head_runs <= 100, "selection.head_runs", "must be between 1 and 100")
    need(1 <= sel.confirm_head_runs <= 100, "selection.confirm_head_runs", "must be between 1 and 100")
    need(0 < sel.effect_sigmas <= 10, "selection.effect_sigmas", "must be > 0 and at most 10 (in σ)")
    need(0 < sel.alpha < 1, "selection.alpha", "must be between 0 and 1 (exclusive)")
    need(0 < sel.beta < 1, "selection.beta", "must be between 0 and 1 (exclusive)")
    need(sel.alpha + sel.beta < 1, "selection.beta", "must be below 1 - selection.alpha (else the SPRT never runs)")
    need(-6 <= sel.confirm_bar <= 6, "selection.confirm_bar", "must be between -6 and 6 (a z)")
    need(cfg.resources.device in ("auto", "cuda", "cpu"), "resources.device", "must be auto, cuda or cpu")
    need(cfg.resources.overlap in ("auto", "on", "off"), "resources.overlap", "must be auto, on or off")
    need(cfg.resources.compile_cache in ("member", "node"), "resources.compile_cache", "must be member or node")
    need(cfg.resources.threads_per_trial >= 1, "resources.threads_per_trial", "must be at least 1")
    need(cfg.stop.max_trials >= 0, "stop.max_trials", "must be >= 0")
    if cfg.population.seed_train_py:
        need(Path(cfg.population.seed_train_py).expanduser().exists(), "population.seed_train_py",
             f"points at {cfg.population.seed_train_py}, which does not exist")


def seed_source(cfg: Config) -> str:
    """The seed train.py of a new population, with the config's constant overrides applied."""
    import trainer
    from trainer.constants import apply_overrides
    path = Path(cfg.population.seed_train_py).expanduser() if cfg.population.seed_train_py \
        else Path(trainer.__file__).parent / "train.py"
    source = path.read_text()
    if not cfg.population.overrides:
        return source
    try:
        return apply_overrides(source, cfg.population.overrides)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{cfg.source or '<config>'}: key 'population.overrides': {exc}") from None
