"""Selection rules of the population as pure functions: results, culling and forks, who proposes next.

No Ray, no git: member state is plain dataclasses in a {name: MemberState} dict; lower val_bpb is better;
randomness comes from a `random.Random` passed in, so every decision is reproducible from the driver's seed."""
from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass

STRATEGIES = ("round_robin", "rank")
MEMBER_PREFIX = "m"                       # new members are named m0, m1, ...
_MEMBER_NAME = re.compile(rf"^{MEMBER_PREFIX}(\d+)$")


@dataclass
class MemberState:
    """What selection knows about one member (rebuilt from the archive on resume)."""
    name: str
    head_score: float | None = None       # val_bpb of the member's head; None until judged
    best_score: float | None = None       # lowest val_bpb of any of its finished trials (informational)
    trials: int = 0                       # finished trials of this member
    promotions: int = 0
    last_improvement_trial: int = 0       # value of `trials` when the head last advanced (or at creation)
    alive: bool = True
    forked_from: str | None = None
    last_trial_index: int = -1            # global index of its latest finished trial

    @property
    def stale_trials(self) -> int:
        """Finished trials of this member since its head last advanced."""
        return self.trials - self.last_improvement_trial


def _get(states: dict, name: str) -> MemberState:
    if name not in states:
        raise KeyError(f"no member named {name!r} (members: {', '.join(sorted(states))})")
    return states[name]


def _lower(a: float | None, b: float | None) -> float | None:
    vals = [v for v in (a, b) if v is not None]
    return min(vals) if vals else None


def apply_result(states: dict, member: str, score: float | None, promoted: bool,
                 trial_index: int) -> MemberState:
    """Record one finished trial of `member` (score None: it produced no val_bpb) in `states`
    ({name: MemberState}, updated in place); returns the member's new state."""
    s = _get(states, member)
    trials = s.trials + 1
    new = dataclasses.replace(s, trials=trials, best_score=_lower(s.best_score, score),
                              last_trial_index=max(s.last_trial_index, trial_index))
    if promoted and score is not None:
        new = dataclasses.replace(new, head_score=score, promotions=s.promotions + 1,
                                  last_improvement_trial=trials)
    states[member] = new
    return new


def due_for_culling(finished_trials: int, every_k: int) -> bool:
    """True after every `every_k`-th finished trial (never when every_k <= 0)."""
    return every_k > 0 and finished_trials > 0 and finished_trials % every_k == 0


def ranking(states) -> list[MemberState]:
    """Alive members with a score, best (lowest head score) first; ties by name ({name: state} or states)."""
    members = states.values() if isinstance(states, dict) else states
    scored = [s for s in members if s.alive and s.head_score is not None]
    return sorted(scored, key=lambda s: (s.head_score, s.name))


def cull_and_fork(states: dict, fraction: float, patience: int, rng: random.Random,
                  taken=()) -> list[tuple[str, str, str]]:
    """[(retire_member, fork_from_member, new_member_name)]: of the bottom `fraction` of ranked members,
    those that have gone `patience` trials without improving, each replaced by a fork of one of the top
    `fraction` (never the best retired). New names avoid `states` and `taken` (e.g. retired names)."""
    ranked = ranking(states)
    n = len(ranked)
    k = min(math.ceil(fraction * n - 1e-9), n - 1) if n >= 2 else 0
    if k <= 0:
        return []
    retire = [s for s in ranked[n - k:] if s.stale_trials >= patience and s.name != ranked[0].name]
    gone = {s.name for s in retire}
    sources = [s for s in ranked[:k] if s.name not in gone] or [ranked[0]]
    names = set(states) | set(taken)
    plan = []
    for old in retire:
        parent = rng.choice(sources)
        child = new_member_name(names)
        names.add(child)
        plan.append((old.name, parent.name, child))
    return plan


def apply_forks(states: dict, plan: list[tuple[str, str, str]], trial_index: int = -1) -> None:
    """Carry out `cull_and_fork`'s plan in `states` (in place): retired members marked dead, forks added
    with their parent's head score and a fresh patience count."""
    for old, parent_name, child in plan:
        states[old] = dataclasses.replace(_get(states, old), alive=False)
        parent = _get(states, parent_name)
        states[child] = MemberState(name=child, head_score=parent.head_score, best_score=parent.head_score,
                                    forked_from=parent.name, last_trial_index=trial_index)


def pick_member(states: dict, rng: random.Random, strategy: str = "round_robin",
                in_flight: dict | None = None) -> str:
    """The alive member that gets the next proposal.

    round_robin: among members with the fewest in-flight/queued candidates, the one with the fewest
    trials (ties drawn by rng). rank: drawn with weight n - rank (best head first; unscored last)."""
    alive = sorted((s for s in states.values() if s.alive), key=lambda s: s.name)
    if not alive:
        raise ValueError("pick_member: the population has no alive member")
    in_flight = in_flight or {}
    if strategy == "round_robin":
        key = {s.name: (in_flight.get(s.name, 0), s.trials + in_flight.get(s.name, 0)) for s in alive}
        best = min(key.values())
        return rng.choice([s.name for s in alive if key[s.name] == best])
    if strategy == "rank":
        order = ranking(alive) + [s for s in alive if s.head_score is None]
        weights = [len(order) - i for i in range(len(order))]
        return rng.choices([s.name for s in order], weights=weights, k=1)[0]
    raise ValueError(f"pick_member: unknown strategy {strategy!r} (known: {', '.join(STRATEGIES)})")


def pick_proposer(weights: dict, rng: random.Random, available=None) -> str | None:
    """A proposer name drawn by weight among those available (all when None); None if none is."""
    names = sorted(n for n, w in weights.items() if w > 0 and (available is None or n in available))
    if not names:
        return None
    return rng.choices(names, weights=[weights[n] for n in names], k=1)[0]


def new_member_name(existing) -> str:
    """A member name never used before: m<N> with N above every existing m<number>."""
    numbers = [int(m.group(1)) for m in map(_MEMBER_NAME.match, existing) if m]
    return f"{MEMBER_PREFIX}{max(numbers, default=-1) + 1}"
