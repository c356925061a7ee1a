"""The loader's state: where an epoch stands, as a small JSON-able dict.

``BioscanLoader.state_dict()`` / ``load_state_dict()`` follow the protocol of
torchdata's ``StatefulDataLoader`` (Lightning and torchdata checkpoint it the
same way). The state names the plan it belongs to and how far each phase of
the epoch got (:mod:`bioscan_io.plan`)::

    {"bioscan_io_loader_state": 1,
     "plan": {"shards": "9f2c...", "n_shards": 29, "samples": 4630,    # the shards' identity
              "task": "mlm", "seed": 0, "shuffle": true, "block_rows": null,
              "pad": true, "drop_last": false},
     "epoch": 3, "rank": 0,
     "phases": [{"world_size": 4, "batch_size": 256, "batches": 120}]}

A phase's ``batches`` is an int when every rank had yielded that many (ranks
advance in lockstep: each yields the same batches, so rank 0's state is enough
when every rank saves at the same step), or one count per rank when the states
of all ranks were merged (:func:`read_state` with a list).
"""

from __future__ import annotations

import hashlib
import json

from .plan import Phase
from .schema import BioscanError

__all__ = ["STATE_VERSION", "plan_identity", "make_state", "read_state"]

#: The version of the state dict's layout; a state of another version is refused.
STATE_VERSION = 1
_KEY = "bioscan_io_loader_state"


def plan_identity(shards, task: str, seed: int, shuffle: bool, block_rows: int | None, pad: bool,
                  drop_last: bool) -> dict:
    """What must be equal for a state to continue a loader's epochs: the shards and the plan's settings."""
    entries = shards.entries or [{"name": url.rsplit("/", 1)[-1]} for url in shards.urls]
    listing = [(e["name"], int(count), e.get("sha256")) for e, count in zip(entries, shards.counts)]
    digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()
    return {"shards": digest, "n_shards": len(listing), "samples": shards.total, "task": task, "seed": seed,
            "shuffle": shuffle, "block_rows": block_rows, "pad": pad, "drop_last": drop_last}


def make_state(identity: dict, epoch: int, rank: int, phases: list[Phase], batches: int, world_size: int,
               batch_size: int) -> dict:
    """The state of a rank that has yielded ``batches`` batches of the current phase (after ``phases``)."""
    done = [{"world_size": p.world_size, "batch_size": p.batch_size, "batches": list(p.batches)} for p in phases]
    now = {"world_size": world_size, "batch_size": batch_size, "batches": batches}
    return {_KEY: STATE_VERSION, "plan": dict(identity), "epoch": epoch, "rank": rank, "phases": done + [now]}


def read_state(state, identity: dict) -> tuple[int, list[Phase]]:
    """``(epoch, phases)`` of a state (or of every rank's states, merged), checked against ``identity``.

    Raises
    ------
    BioscanError
        One line, saying what differs: not a loader state, another version,
        other shards or plan settings, or rank states that do not belong together.
    """
    states = list(state) if isinstance(state, (list, tuple)) else [state]
    if not states:
        raise BioscanError("load_state_dict: an empty list of loader states")
    parsed = [_check(s, identity) for s in states]
    first = states[0]
    epoch, phases = first["epoch"], first["phases"]
    if len(states) == 1:
        return epoch, parsed[0]
    for s in states[1:]:
        if s["epoch"] != epoch or [p | {"batches": 0} for p in s["phases"]] != [p | {"batches": 0} for p in phases]:
            raise BioscanError(f"load_state_dict: the states of rank {first['rank']} and rank {s['rank']} are from "
                               "different points of the run (epoch or phases differ)")
    world = phases[-1]["world_size"]
    ranks = sorted(s["rank"] for s in states)
    if ranks != list(range(world)):
        raise BioscanError(f"load_state_dict: merging needs one state per rank 0..{world - 1}; got ranks {ranks}")
    by_rank = {s["rank"]: s["phases"][-1]["batches"] for s in states}
    last = dict(phases[-1], batches=[by_rank[r] if isinstance(by_rank[r], int) else by_rank[r][r]
                                     for r in range(world)])  # a merged state saved again holds a list
    return epoch, [_phase(p) for p in phases[:-1]] + [_phase(last)]


def _check(state, identity: dict) -> list[Phase]:
    """The state's phases, once it is known to be a loader state of this plan."""
    if not isinstance(state, dict) or _KEY not in state:
        raise BioscanError("load_state_dict: not a bioscan-io loader state (a dict from BioscanLoader.state_dict(), "
                           f"with {_KEY!r})")
    if state[_KEY] != STATE_VERSION:
        raise BioscanError(f"load_state_dict: loader state version {state[_KEY]!r} cannot be read by this "
                           f"bioscan-io (it reads version {STATE_VERSION})")
    try:
        plan, epoch, rank, phases = state["plan"], int(state["epoch"]), int(state["rank"]), state["phases"]
        parsed = [_phase(p) for p in phases]
    except (KeyError, TypeError, ValueError) as exc:
        raise BioscanError(f"load_state_dict: malformed loader state ({type(exc).__name__}: {exc})") from None
    if not parsed or epoch < 0 or rank < 0:
        raise BioscanError("load_state_dict: malformed loader state (no phases, or a negative epoch or rank)")
    differs = _differences(plan, identity)
    if differs:
        raise BioscanError(f"load_state_dict: this state belongs to another plan: {'; '.join(differs)}")
    return parsed


def _differences(plan: dict, identity: dict) -> list[str]:
    if not isinstance(plan, dict):
        return ["it names no plan"]
    out = []
    if any(plan.get(k) != identity[k] for k in ("shards", "n_shards", "samples")):
        out.append(f"shards: the state's are {plan.get('n_shards')} shard(s), {plan.get('samples')} samples "
                   f"(sha256 {str(plan.get('shards'))[:12]}...), this loader's {identity['n_shards']}, "
                   f"{identity['samples']} (sha256 {identity['shards'][:12]}...)")
    for key in ("task", "seed", "shuffle", "block_rows", "pad", "drop_last"):
        if plan.get(key) != identity[key]:
            out.append(f"{key} {plan.get(key)!r} in the state, {identity[key]!r} here")
    return out


def _phase(p: dict) -> Phase:
    world_size, batch_size, batches = int(p["world_size"]), int(p["batch_size"]), p["batches"]
    if world_size < 1 or batch_size < 1:
        raise ValueError("a phase needs world_size and batch_size of at least 1")
    counts = [int(batches)] * world_size if isinstance(batches, int) else [int(c) for c in batches]
    if len(counts) != world_size or min(counts) < 0:
        raise ValueError(f"a phase of {world_size} ranks has batch counts {batches!r}")
    return Phase(world_size, batch_size, tuple(counts))
