"""Notes on the running statistics of a `diff`: statistics that did not move while parameters
trained (`stats-frozen`), statistics that moved without their counter
(`stats-moved-counter-still`), and the reverse (`counter-moved-stats-still`). They never change
the verdict.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Sequence

from bufinspect.analysis.findings import name_keys, plural
from bufinspect.model import DiffNote, Entry, Role, Scope, Status
from bufinspect.scan.norms import AFFINE, COUNTER, STATS, bytes_differ


def parameters_changed(pairs: Sequence[tuple[Entry, Entry]]) -> bool:
    """Whether any parameter's bytes differ: normalization affine tensors first (small, and they
    move whenever the network trains), then the rest; each pass stops at the first differing
    chunk, so a trained pair costs a chunk or two and identical parameters one memcmp-speed
    pass over both files' parameter bytes."""
    affine = [p for p in pairs if p[0].name in AFFINE and p[0].numel <= 1 << 16]
    chosen = {id(p[0]) for p in affine}
    return bytes_differ(affine) or bytes_differ([p for p in pairs if id(p[0]) not in chosen])


def notes_for_diff(entries: Sequence[Any], scope: Scope, ents_a: list[Entry],
                   by_b: dict[str, Entry], names_a: dict[str, str]) -> tuple[DiffNote, ...]:
    """The notes of one diff (`analysis.diff` calls this with its entries and aligned keys).

    Whether parameters changed comes from the entries when they are in scope (`all`); with the
    default buffers scope from a byte compare of the aligned parameter pairs, stopping at the
    first difference, run only when every running statistic stayed equal. With `parameters`
    scope the statistics are out of scope: no notes.
    """
    if scope is Scope.PARAMETERS:
        return ()

    def changed_params() -> bool:
        # from the entries when they hold the parameters; a selection that leaves them out
        # (`--role buffer` runs in the `all` scope) compares their bytes as the default does
        if scope is Scope.ALL and any(e.role is Role.PARAMETER for e in entries):
            return any(e.role is Role.PARAMETER and e.status in (Status.CLOSE, Status.CHANGED)
                       for e in entries)
        pairs = []
        for ea in ents_a:
            eb = by_b.get(names_a[ea.key])
            if (ea.role is Role.PARAMETER and eb is not None and eb.role is Role.PARAMETER
                    and ea.shape == eb.shape and ea.dtype == eb.dtype):
                pairs.append((ea, eb))
        return parameters_changed(pairs)

    return tuple(diff_notes(entries, changed_params))


def diff_notes(entries: Sequence[Any], changed_params: Callable[[], bool]) -> list[DiffNote]:
    """Notes on the running statistics of a diff's entries (`DiffEntry` objects).

    `changed_params` is called (no arguments) only when every running statistic stayed equal,
    to learn whether parameters changed.
    """
    layers: dict[str, dict[str, Any]] = defaultdict(dict)
    for d in entries:
        module, _, name = d.key.rpartition(".")
        if (name in STATS or name == COUNTER) and d.role is not Role.PARAMETER:
            layers[module][name] = d
    layers = {m: g for m, g in layers.items() if all(s in g for s in STATS)}
    if not layers:
        return []
    compared = (Status.EQUAL, Status.CLOSE, Status.CHANGED)
    notes = []
    stats = [g[s] for g in layers.values() for s in STATS]
    if all(d.status is Status.EQUAL for d in stats) and changed_params():
        notes.append(DiffNote(
            "stats-frozen",
            f"buffers did not move while parameters trained: all "
            f"{plural(len(stats), 'running statistic')} of "
            f"{plural(len(layers), 'normalization layer')} are equal but parameters changed. "
            f"BatchNorm in eval mode or frozen? (intended when fine-tuning with frozen norms)",
            tuple(d.key for d in stats)))
    moved, ticked = [], []
    for module, g in layers.items():
        counter = g.get(COUNTER)
        if counter is None or counter.status not in compared:
            continue
        st = [g[s].status for s in STATS]
        if any(s not in compared for s in st):
            continue
        stats_moved = any(s is not Status.EQUAL for s in st)
        # InstanceNorm(track_running_stats=True) moves its statistics and never counts (torch
        # increments the counter in BatchNorm only); a state dict cannot tell the two apart,
        # so a counter that stays 0 says nothing
        if stats_moved and counter.status is Status.EQUAL and counter.old:
            moved.append(module or "(root)")
        elif not stats_moved and counter.status is not Status.EQUAL:
            ticked.append(module or "(root)")
    if moved:
        notes.append(DiffNote(
            "stats-moved-counter-still",
            f"running statistics moved but num_batches_tracked did not in "
            f"{name_keys(moved)}: the statistics were copied, averaged (EMA, SWA update_bn) or "
            f"re-estimated outside forward passes in train mode",
            tuple(f"{m}.{COUNTER}" if m != "(root)" else COUNTER for m in moved)))
    if ticked:
        notes.append(DiffNote(
            "counter-moved-stats-still",
            f"num_batches_tracked moved but the running statistics did not in "
            f"{name_keys(ticked)}: forward passes counted batches without updating the "
            f"statistics (momentum 0), or the statistics were restored afterwards",
            tuple(f"{m}.{COUNTER}" if m != "(root)" else COUNTER for m in ticked)))
    return notes
