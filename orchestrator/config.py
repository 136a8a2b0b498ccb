"""The one popsearch config: nested dataclasses with defaults, loaded from YAML, validated at start.

Every error names the file and the dotted key that is wrong; nothing starts on a bad config."""
from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from judge.spec import DataConfig, JudgeConfig
from trainer.spec import BudgetConfig

PROPOSERS = ("mutate", "agent", "endpoint", "inbox")
AGENT_CLIS = ("claude", "codex", "gemini", "aider", "opencode", "custom")   # proposers.agent presets
YAML_SWITCHES = ("resources.overlap",)     # str keys whose values on/off YAML turns into booleans
# Keys of older configs (and of archives' saved config.yaml) that are read and ignored: the margins of the first
# rule, then the SPRT's knobs (selection.alpha and the rest), replaced by the empirical-Bayes rule.
RETIRED_KEYS = ("selection.margin", "selection.margin_std", "selection.effect_sigmas", "selection.alpha",
                "selection.beta", "selection.confirm_runs", "selection.confirm_bar", "selection.confirm_head_runs")

# The built-in default (`popsearch run` with no config) is the CPU demo: the baseline train.py shrunk by
# these overrides, short budgets and a few trials. configs/demo.yaml spells the same values out (a test keeps
# the two equal); a config file that omits a key gets the dataclass default below, never a demo value.
DEMO_OVERRIDES = {
    "DEPTH": 2, "MODEL_DIM": 64, "N_HEADS": 2, "SEQ_LEN": 64, "DEVICE_BATCH_SIZE": 8,
    "TOTAL_BATCH_SIZE": 512, "SHORT_WINDOW": 32, "COMPILE": False,
}
DEMO_SETTINGS = {
    "population": {"overrides": DEMO_OVERRIDES},
    "budget": {"seconds": 8.0, "startup_floor": 30.0, "finish_allowance": 30.0},
    "judge": {"seq_len": 128, "eval_tokens": 16384},
    "selection": {"patience": 2, "head_runs": 3, "rerun_head_runs": 4},
    "stop": {"max_trials": 16},
}


# Each member is a git branch that must be trained before selection can rank it; past this many the first
# round alone outlasts any run, and the archive's refs and the live board stop being readable.
MAX_POPULATION = 10_000


class ConfigError(ValueError):
    """A config file that popsearch refuses to start with."""


@dataclass
class Where:
    """The file a config came from and the line of each dotted key in it (for error messages)."""
    file: str
    lines: dict = field(default_factory=dict)

    def at(self, key: str = "") -> str:
        line = self.lines.get(key)
        return f"{self.file}:{line}" if line else self.file


def _where(where) -> Where:
    return where if isinstance(where, Where) else Where(str(where))


def key_lines(text: str) -> dict:
    """{dotted key: 1-based line} of every mapping key in a YAML text (empty when it does not compose)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict = {}

    def walk(node, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            dotted = prefix + str(key.value)
            lines[dotted] = key.start_mark.line + 1
            walk(value, dotted + ".")
    walk(root, "")
    return lines


@dataclass
class PopulationConfig:
    size: int = 4                        # members kept alive at once
    seed_train_py: str = ""              # '' = trainer/train.py shipped with popsearch
    overrides: dict = field(default_factory=dict)  # constants rewritten into the seed at creation


@dataclass
class EndpointConfig:
    """An OpenAI-compatible chat-completions endpoint (proposers.endpoint)."""
    base_url: str = ""                   # e.g. http://vllm-head:8000/v1 (…/chat/completions is appended)
    model: str = ""
    api_key_env: str = ""                # name of the environment variable holding the key ('' = no key)
    concurrency: int = 2                 # requests at once
    timeout: float = 300.0               # seconds per request
    retries: int = 2                     # further attempts after a failed or timed-out request
    backoff: float = 2.0                 # seconds before the first retry, doubled after each
    max_tokens: int = 8192               # of the answer
    temperature: float = 0.7
    prices: dict = field(default_factory=dict)   # model -> {prompt: $ per 1M tokens, completion: $ per 1M tokens}


@dataclass
class ProposerConfig:
    weights: dict = field(default_factory=lambda: {"mutate": 1.0})  # proposer -> share of proposals
    mutate_changes: int = 2              # a mutation changes 1..this many constants
    agent: str = "custom"                # claude | codex | gemini | aider | opencode | custom (agent_command)
    agent_command: str = ""              # custom: template with {workdir} {program} {history}
    agent_concurrency: int = 2           # agents running at once
    agent_timeout: float = 900.0         # seconds before an agent is killed
    program: str = ""                    # the research brief handed to agents (path); '' = the packaged program.md
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    inbox_dir: str = ""                  # '' = ARCHIVE/inbox
    queue_depth: int = 0                 # ready candidates kept ahead; 0 = 2 x actors


@dataclass
class SelectionConfig:
    noise_seeds: int = 3                 # runs of the seed at creation: its score and the first σ
    promote_at: float = 0.55             # promote when P(the edit is a win) reaches this
    discard_at: float = 0.15             # discard when it falls to this; between the two, run it again
    max_runs: int = 3                    # runs of a candidate at most
    head_runs: int = 3                   # the head's weight (runs) on a device kind before a candidate's first verdict
    rerun_head_runs: int = 6             # ... before the verdict on a candidate's second and later runs
    prior_null: float = 0.5              # the default prior over edit effects: share with no effect,
    prior_mean: float = 0.3              # the others' mean effect in σ (positive: worse),
    prior_sd: float = 1.0                # and their spread in σ
    prior_weight: float = 20.0           # verdicts the default counts as against the population's own
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
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    proposers: ProposerConfig = field(default_factory=ProposerConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    source: str = ""                     # the file this config came from (set by load)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d


def load(path: str | Path | None = None) -> Config:
    """Read a YAML config and validate it; no path gives the built-in default (the CPU demo)."""
    if path is None:
        return builtin_demo()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file" if not path.exists() else f"{path}: not a file")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{at}: not valid YAML: {' '.join(str(problem).split())}") from None
    if raw is None:
        raise ConfigError(f"{path}: the config file is empty (run without a config for the built-in demo)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    where = Where(str(path), key_lines(text))
    cfg = from_dict(raw, where=where)
    cfg.source = str(path)
    validate(cfg, where=where)
    return cfg


def builtin_demo() -> Config:
    """`popsearch run` with no config: the CPU demo (the same as configs/demo.yaml)."""
    cfg = from_dict(copy.deepcopy(DEMO_SETTINGS), where="<built-in demo>")
    cfg.source = "<built-in demo>"
    validate(cfg, where=cfg.source)
    return cfg


def from_dict(raw: dict, where: str | Where = "<dict>") -> Config:
    where = _where(where)
    return _build(Config, _budget_value(raw, where), where, prefix="")


def _budget_value(raw: dict, where: Where) -> dict:
    """`budget: {kind: flops, value: N}` (or kind time) is shorthand for budget.flops / budget.seconds."""
    budget = raw.get("budget")
    if not isinstance(budget, dict) or "value" not in budget:
        return raw
    budget = dict(budget)
    key = "flops" if budget.get("kind") == "flops" else "seconds"
    if key in budget:
        raise ConfigError(f"{where.at('budget.value')}: keys 'budget.value' and 'budget.{key}' say the same thing; "
                          f"keep one")
    budget[key] = budget.pop("value")
    return {**raw, "budget": budget}


def _build(cls, raw: dict, where: Where, prefix: str):
    hints = typing.get_type_hints(cls)
    raw = {k: v for k, v in raw.items() if prefix + k not in RETIRED_KEYS}
    known = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"{where.at(key)}: unknown key '{key}' (known keys here: {', '.join(sorted(known))})")
    values = {}
    for name, value in raw.items():
        key = prefix + name
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise ConfigError(f"{where.at(key)}: key '{key}' must be a mapping, got {value!r}")
            values[name] = _build(kind, value, where, prefix=key + ".")
        else:
            if kind is str and isinstance(value, bool) and key in YAML_SWITCHES:
                value = "on" if value else "off"        # YAML reads a bare on/off as a boolean
            values[name] = _coerce(value, kind, where, key)
    return cls(**values)


def _coerce(value, kind, where: Where, key: str):
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
        number = _number(value)
        if number is not None and math.isfinite(number) and number == int(number):
            return int(number)
    elif kind is float:
        number = _number(value)
        if number is not None:
            return number
    elif kind is str:
        if isinstance(value, str):
            return value
    elif kind is dict or typing.get_origin(kind) is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        return value
    raise ConfigError(f"{where.at(key)}: key '{key}' must be {kind.__name__}, got {value!r} ({type(value).__name__})")


def _number(value) -> float | int | None:
    """An int or float, or a string YAML 1.1 left unparsed (`1e15`, `3e2`) read as one; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _at_least(low):
    return lambda v: v >= low, f"must be >= {low}"


def _above(low):
    return lambda v: v > low, f"must be > {low}"


def _between(low, high, note=""):
    return lambda v: low <= v <= high, f"must be between {low} and {high}{note}"


# The range of every numeric setting (a test checks that none is missing). Floats must also be finite.
NUMBER_RULES = {
    "seed": _at_least(0),
    "population.size": _between(1, MAX_POPULATION, " (each member is a branch that must be trained before "
                                                   "selection can rank it)"),
    "budget.seconds": _above(0),
    "budget.flops": _at_least(0),
    "budget.reference_speed": _at_least(0),
    "budget.startup_allowance": _at_least(0),
    "budget.startup_floor": _at_least(0),
    "budget.finish_allowance": _above(0),
    "budget.overrun_tolerance": _between(0, 1),
    "data.vocab_size": (lambda v: 260 <= v <= 1 << 20, "must be between 260 (256 bytes + specials) and 1048576"),
    "data.max_train_docs": _at_least(0),
    "data.val_docs": _at_least(0),
    "data.climbmix_shards": _at_least(1),
    "data.climbmix_val_shard": _at_least(0),
    "data.download_workers": _at_least(1),
    "data.download_retries": _at_least(0),
    "judge.seq_len": _at_least(8),
    "judge.eval_tokens": _at_least(8),
    "judge.eval_batch": _at_least(1),
    "judge.probe_positions": _at_least(1),
    "judge.timeout_seconds": _above(0),
    "proposers.mutate_changes": _at_least(1),
    "proposers.agent_concurrency": _at_least(1),
    "proposers.agent_timeout": _above(0),
    "proposers.queue_depth": _at_least(0),
    "proposers.endpoint.concurrency": _at_least(1),
    "proposers.endpoint.timeout": _above(0),
    "proposers.endpoint.retries": _at_least(0),
    "proposers.endpoint.backoff": _at_least(0),
    "proposers.endpoint.max_tokens": _at_least(1),
    "proposers.endpoint.temperature": _between(0, 2),
    "selection.noise_seeds": _between(1, 100, " (the baseline runs)"),
    "selection.max_runs": _between(1, 100),
    "selection.head_runs": _between(1, 100),
    "selection.rerun_head_runs": _between(1, 100),
    "selection.promote_at": (lambda v: 0 < v < 1, "must be between 0 and 1 (both excluded)"),
    "selection.discard_at": (lambda v: 0 <= v < 1, "must be at least 0 and below 1"),
    "selection.prior_null": (lambda v: 0 <= v <= 0.95, "must be between 0 and 0.95 (a share)"),
    "selection.prior_mean": _between(-4, 4, " (in σ)"),
    "selection.prior_sd": (lambda v: 0.1 <= v <= 8, "must be between 0.1 and 8 (in σ)"),
    "selection.prior_weight": _between(0, 100000, " (verdicts)"),
    "selection.cull_every": (lambda v: v >= 1, "must be at least 1 (to never cull, set it above stop.max_trials)"),
    "selection.cull_fraction": (lambda v: 0 < v < 1, "must be between 0 and 1 (both excluded)"),
    "selection.patience": _at_least(0),
    "selection.early_stop_margin": _at_least(0),
    "selection.early_stop_min_progress": _between(0, 1),
    "stop.max_trials": _at_least(0),
    "stop.max_wall_seconds": _at_least(0),
    "resources.cpu_slots": _at_least(0),
    "resources.threads_per_trial": _at_least(1),
    "resources.max_retries": _at_least(0),
    "resources.log_cap_bytes": _at_least(1024),
}


def numeric_settings(obj, prefix: str = "") -> dict:
    """{dotted key: value} of every int and float setting of a config (or section), nested ones included."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(numeric_settings(value, prefix + f.name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix + f.name] = value
    return out


def validate(cfg: Config, where: str | Where = "<config>") -> None:
    """Range and consistency checks; raises ConfigError naming the file, the key and, when known, its line."""
    where = _where(where)

    def need(ok: bool, key: str, what: str):
        if not ok:
            raise ConfigError(f"{where.at(key)}: key '{key}' {what}")

    for key, value in numeric_settings(cfg).items():
        need(math.isfinite(value), key, f"must be a finite number, got {value!r}")
        rule = NUMBER_RULES.get(key)
        if rule is not None:
            need(rule[0](value), key, f"{rule[1]}, got {value!r}")
    need(cfg.budget.kind in ("time", "flops"), "budget.kind", "must be 'time' or 'flops'")
    need(cfg.budget.kind != "flops" or cfg.budget.flops > 0, "budget.flops", "must be > 0 when budget.kind is flops")
    corpus = cfg.data.corpus
    need(corpus in ("builtin", "climbmix") or corpus.startswith("local:"), "data.corpus",
         f"must be builtin, climbmix or local:PATH, got {corpus!r}")
    if corpus.startswith("local:"):
        from judge.corpus import local_corpus_problem
        folder = Path(corpus[len("local:"):]).expanduser()
        problem = local_corpus_problem(folder)
        need(not problem, "data.corpus", f"names {folder}: {problem}")
    need(cfg.judge.eval_tokens >= cfg.judge.seq_len, "judge.eval_tokens", "must be at least judge.seq_len")
    bad = sorted(set(cfg.proposers.weights) - set(PROPOSERS))
    need(not bad, "proposers.weights", f"names unknown proposers {bad} (known: {', '.join(PROPOSERS)})")
    weights = cfg.proposers.weights
    need(all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
             for w in weights.values()), "proposers.weights", "must map proposer names to finite weights >= 0")
    need(sum(weights.values()) > 0, "proposers.weights", "must give some proposer a weight > 0")
    _validate_agents(cfg.proposers, need)
    need(cfg.selection.discard_at < cfg.selection.promote_at, "selection.discard_at",
         "must be below selection.promote_at")
    need(cfg.resources.device in ("auto", "cuda", "cpu"), "resources.device", "must be auto, cuda or cpu")
    need(cfg.resources.overlap in ("auto", "on", "off"), "resources.overlap", "must be auto, on or off")
    need(cfg.resources.compile_cache in ("member", "node"), "resources.compile_cache", "must be member or node")
    if cfg.population.seed_train_py:
        need(Path(cfg.population.seed_train_py).expanduser().exists(), "population.seed_train_py",
             f"points at {cfg.population.seed_train_py}, which does not exist")


def _validate_agents(p: ProposerConfig, need) -> None:
    need(p.agent in AGENT_CLIS, "proposers.agent", f"must be one of {', '.join(AGENT_CLIS)}, got {p.agent!r}")
    need(p.weights.get("agent", 0) == 0 or p.agent != "custom" or bool(p.agent_command.strip()),
         "proposers.agent_command", "must be set when proposers.weights.agent > 0 and proposers.agent is custom")
    need(not p.program or Path(p.program).expanduser().is_file(), "proposers.program",
         f"points at {p.program}, which is not a file ('' = the program.md shipped with popsearch)")
    e = p.endpoint
    if p.weights.get("endpoint", 0) > 0:
        need(e.base_url.startswith(("http://", "https://")), "proposers.endpoint.base_url",
             f"must be an http:// or https:// URL when proposers.weights.endpoint > 0, got {e.base_url!r}")
        need(bool(e.model.strip()), "proposers.endpoint.model", "must name the model when proposers.weights.endpoint > 0")
    for model, price in e.prices.items():
        need(isinstance(price, dict) and set(price) <= {"prompt", "completion"}
             and all(isinstance(v, (int, float)) and v >= 0 for v in price.values()),
             f"proposers.endpoint.prices.{model}", "must be {prompt: $/1M tokens, completion: $/1M tokens}, both >= 0")


def seed_path(cfg: Config) -> Path:
    """The seed train.py of a new population: population.seed_train_py, else the one shipped with popsearch."""
    import trainer
    return Path(cfg.population.seed_train_py).expanduser() if cfg.population.seed_train_py \
        else Path(trainer.__file__).parent / "train.py"


def seed_source(cfg: Config) -> str:
    """The seed train.py of a new population, with the config's constant overrides applied; ConfigError
    naming the file and line when it does not parse."""
    from trainer.constants import apply_overrides
    path = seed_path(cfg)
    source = path.read_text()
    try:
        compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: the seed train.py does not parse: {exc.msg}") from None
    if not cfg.population.overrides:
        return source
    try:
        return apply_overrides(source, cfg.population.overrides)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{cfg.source or '<config>'}: key 'population.overrides': {exc}") from None
