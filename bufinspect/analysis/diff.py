"""Two checkpoints -> DiffReport: which module-state tensors moved, and by how much.

Keys are aligned first (`analysis.align`), then metadata decides `added`/`removed`/`shape`/`dtype`
without reading any data. Entries that match in shape and dtype go to the scan layer's paired
sweep (`scan.compare_pairs`): byte-identical chunks cost one memcmp, only differing chunks reach
the float64 kernel. `rejudge_report` judges saved metrics (`formats.metrics`) again under new
tolerances without reading checkpoints.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Iterable, Sequence

from bufinspect import _gc
from bufinspect.analysis.align import align, module_state
from bufinspect.errors import InputError, UsageError
from bufinspect.model import (SCOPE_ROLES, Checkpoint, DiffEntry, DiffNote, DiffReport, Entry,
                              Role, Scope, Status, Tolerance, tolerances_for)
from bufinspect.parallel import Work
from bufinspect.scan import Engine, castloss, compare_pairs


@_gc.paused()  # (the pass keeps what it builds until the report is done)
def diff(ck_a: Checkpoint, ck_b: Checkpoint, *, scope: Scope | str = Scope.BUFFERS,
         rtol: float = 1e-5, atol: float = 1e-8, tolerances: Iterable[Tolerance | str] = (),
         containers: Sequence[str] = (), strip_prefix: Sequence[str] = (),
         add_prefix: Sequence[str] = (), rename: Sequence[tuple[str, str] | str] = (),
         auto_align: bool = True, device: str = "cpu", save_envelope: bool = False,
         progress: Callable[[int], None] | None = None, jobs: int = 1,
         work: Work | None = None, notes: bool = True,
         keep: Callable[[str, str | None, Role], bool] | None = None) -> DiffReport:
    """Compare the module state of two checkpoints.

    Args:
        ck_a, ck_b: the checkpoints (`bufinspect.load`; `bufinspect.diff` takes paths).
        scope: `buffers` (buffers and unknown entries, the default), `parameters` (parameters and
            unknown entries) or `all`.
        rtol, atol: allclose tolerances, `|a-b| <= atol + rtol*|b|`, computed in float64.
        tolerances: per-key overrides (`Tolerance` or `GLOB=RTOL[,ATOL]` strings; last match wins).
        containers: zero, one (both sides) or two (A, B) container paths; default: the one
            module state dict of each checkpoint.
        strip_prefix, add_prefix, rename: key alignment rules (see `align`); `rename` items are
            `(OLD, NEW)` or `OLD=NEW`.
        auto_align: remove `module.`/`_orig_mod.` prefixes that only one side has.
        device: `cpu`, `cuda` (UsageError without a GPU) or `auto` (a GPU when one is present
            and more than 64 MiB of data differs).
        save_envelope: also keep what `rejudge_report` needs (costs time on differing chunks).
        progress: called with the number of bytes read after each step (from worker threads
            when `jobs` > 1).
        jobs: CPU threads for the data sweep (the report does not depend on it).
        work: how the data pass is shared (`parallel.Work(jobs)` by default;
            `bufinspect.distributed.RankWork` shares it across torch.distributed ranks).
        notes: add the running-statistics notes (`analysis.diffnotes.notes_for_diff`; with
            the default buffers scope this may byte-compare parameters, stopping at the first
            difference).
        keep: `keep(key, key_b, role)` says which in-scope entries to compare (`diff --filter`
            / `--role`, see `analysis.views.selector`); the others are not read at all.

    Returns:
        A `DiffReport`: entries in A's key order (added keys last), with statuses and metrics.
    """
    scope = Scope(scope)
    tols = tuple(t if isinstance(t, Tolerance) else Tolerance.parse(t) for t in tolerances)
    if not (rtol >= 0 and atol >= 0):
        raise UsageError("--rtol and --atol must be non-negative numbers")
    containers = list(containers)
    if len(containers) > 2:
        raise UsageError("--container may be given at most twice (A's, then B's)")
    ca = containers[0] if containers else None
    cb = containers[-1] if containers else None
    path_a, ents_a = module_state(ck_a, ca)
    path_b, ents_b = module_state(ck_b, cb)
    renames = [tuple(r.split("=", 1)) if isinstance(r, str) else r for r in rename]
    for r in renames:
        if len(r) != 2 or not r[0]:
            raise UsageError(f"--rename {'='.join(r)!r}: expected OLD=NEW")
    ma, mb, applied = align([e.key for e in ents_a], [e.key for e in ents_b], strip=strip_prefix,
                            add=add_prefix, rename=renames, auto=auto_align)
    by_b: dict[str, Entry] = {}
    for e in ents_b:
        by_b.setdefault(mb[e.key], e)
    roles = SCOPE_ROLES[scope]
    engine = Engine(device)
    results: list[dict[str, Any]] = []  # DiffEntry fields, built once at the end
    pairs: list[tuple[Entry, Entry]] = []
    slots: list[tuple[int, float, float]] = []
    seen_b: set[str] = set()
    for ea in ents_a:
        name = ma[ea.key]
        eb = by_b.get(name)
        if eb is not None:
            seen_b.add(name)
        if ea.role not in roles and (eb is None or eb.role not in roles):
            continue
        role = ea.role if ea.role is not Role.UNKNOWN or eb is None else eb.role
        if keep is not None and not keep(ea.key, eb.key if eb is not None else None, role):
            continue
        r, t = tolerances_for(ea.key, rtol, atol, tols)
        fields = {"key": ea.key, "role": role, "status": Status.EQUAL, "shape": ea.shape,
                  "dtype": ea.dtype, "key_b": eb.key if eb is not None else None, "rtol": r,
                  "atol": t}
        if eb is None:
            fields["status"] = Status.REMOVED
        elif ea.shape != eb.shape:
            fields.update(status=Status.SHAPE, shape_b=eb.shape,
                          dtype_b=eb.dtype if eb.dtype != ea.dtype else None)
        elif ea.dtype != eb.dtype:
            fields.update(status=Status.DTYPE, dtype_b=eb.dtype)
            if castloss.measurable(ea, eb):  # what the cast lost (scan.castloss)
                fields.update(castloss.measure(ea, eb, r, t))
        else:
            slots.append((len(results), r, t))
            pairs.append((ea, eb))
        results.append(fields)
    for eb in ents_b:
        if mb[eb.key] not in seen_b and eb.role in roles and \
                (keep is None or keep(eb.key, None, eb.role)):
            results.append({"key": eb.key, "role": eb.role, "status": Status.ADDED,
                            "shape": eb.shape, "dtype": eb.dtype, "rtol": rtol, "atol": atol})
    measured = compare_pairs(pairs, [(r, t) for _, r, t in slots], engine, save_envelope,
                             progress, work or Work(jobs))
    for (pos, _, _), f in zip(slots, measured):
        results[pos].update(f)
    entries = tuple(DiffEntry(**f) for f in results)
    remarks: tuple[Any, ...] = ()
    if notes:
        from bufinspect.analysis.diffnotes import notes_for_diff

        remarks = notes_for_diff(entries, scope, ents_a, by_b, ma)
    return DiffReport((ck_a.path, ck_b.path), scope, rtol, atol, entries, tols,
                      (path_a, path_b), applied, engine.name, notes=remarks)


# ---- saved metrics (read by `formats.metrics`) -------------------------------------------


def _num(v: Any) -> Any:
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    return v


def rejudge_report(doc: dict[str, Any], *, rtol: float | None = None, atol: float | None = None,
                   tolerances: Iterable[Tolerance | str] | None = None,
                   source: str = "metrics") -> DiffReport:
    """Judge saved per-entry metrics again under new tolerances, without reading checkpoints.

    Exact wherever the saved envelope decides it (an entry is `close` when every bucket's largest
    |a-b| is within `atol + rtol * (bucket's smallest |b|)`, `changed` when one exceeds
    `atol + rtol * (bucket's largest |b|)`). Between the two (buckets are 2**-7 wide in |b|)
    the entry is reported `changed` with `approximate: true`. `mismatched` is kept only where the
    tolerances are the saved ones (otherwise null: counts need the data).
    """
    try:
        rtol = float(doc["rtol"]) if rtol is None else rtol
        atol = float(doc["atol"]) if atol is None else atol
        if tolerances is None:
            tolerances = doc.get("tolerances", [])
        tols = tuple(t if isinstance(t, Tolerance) else Tolerance.parse(t) for t in tolerances)
        entries = []
        for d in doc["entries"]:
            status = Status(d["status"])
            kw: dict[str, Any] = {k: _num(d.get(k)) for k in (
                "numel", "max_abs", "max_rel", "mean_abs", "nonfinite", "rel_l2", "cosine", "old",
                "new", "note")}
            shape = tuple(d["shape"]) if d.get("shape") is not None else None
            e = DiffEntry(d["key"], Role(d["role"]), status, shape, d.get("dtype"),
                          key_b=d.get("key_b"),
                          shape_b=tuple(d["shape_b"]) if d.get("shape_b") else None,
                          dtype_b=d.get("dtype_b"), **kw)
            if status in (Status.EQUAL, Status.CLOSE, Status.CHANGED) and e.note is None:
                r, t = tolerances_for(e.key, rtol, atol, tols)
                mismatched = d.get("mismatched") if (r, t) == (d.get("rtol"), d.get("atol")) \
                    else None
                env = d.get("envelope")
                if status is Status.EQUAL:
                    new = Status.EQUAL
                    mismatched = 0
                    approx = False
                elif e.nonfinite:
                    new, approx = Status.CHANGED, False
                elif env is None:
                    raise InputError(f"entry {e.key!r} has no envelope: save metrics with "
                                     "--save-metrics to re-judge them", source)
                else:
                    verdict = _rejudge(env, r, t)
                    new = Status.CLOSE if verdict else Status.CHANGED
                    approx = verdict is None
                if mismatched is None and new is Status.CLOSE:
                    mismatched = 0
                e = replace(e, status=new, rtol=r, atol=t, mismatched=mismatched,
                            approximate=approx,
                            envelope=tuple(tuple(p) for p in env) if env else None)
            entries.append(e)
        notes = tuple(DiffNote(n["id"], n["message"], tuple(n.get("keys", ())))
                      for n in doc.get("notes") or ())
        return DiffReport(tuple(doc["paths"]), Scope(doc["scope"]), rtol, atol, tuple(entries),
                          tols, tuple(doc.get("containers") or (None, None)),
                          doc.get("alignment") or {}, doc.get("device", "cpu"), from_metrics=True,
                          notes=notes)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"not a bufinspect metrics file ({type(exc).__name__}: {exc})",
                         source) from None


def _rejudge(env: list[list[float]], rtol: float, atol: float) -> bool | None:
    from bufinspect.numeric import rejudge  # numpy: only when saved metrics are re-judged

    return rejudge([[float(x) for x in p] for p in env], rtol, atol)
