"""Buffer diagnostics: the bugs that buffers cause, found from the files alone. (Long: the
statistics findings and the EMA pairing share one reading of the normalization layers, and the
rules read best next to each other; `--model` and `diff` notes live in `loadcheck`/`diffnotes`.)

Why people open a checkpoint's buffers at all: "my model evaluates differently after loading".
The usual causes, and what this module looks at to name them:

- Normalization statistics that never moved (`stats-at-init`): a layer's `running_mean` is all 0
  and `running_var` all 1 (`num_batches_tracked` 0 or absent) while its affine `weight`/`bias`
  trained. "Trained" means *not constant*: initializers set constants (1 and 0, and 0 for the
  last norm of a residual block with `zero_init_residual`/`zero_init_last`), a few optimizer
  steps never leave a vector of channels constant. A freshly initialized model therefore never
  fires, and neither does a one-channel layer (which cannot tell).
- Counters that never ticked (`stats-never-tracked`): `num_batches_tracked` 0 on every
  normalization layer of a state dict whose affine parameters trained.
- An EMA / averaged copy whose buffers were never synced (`ema-buffers-stale`): the copy's
  statistics still at init while the model's moved, the copy lacking buffers the model has, or
  (several files in one `check`) the copy's statistics byte-identical to an earlier file's while
  the model's moved.
- A model that will not load the file (`missing-key`, `unexpected-key`, `shape-mismatch`, and
  `key-prefix` for a wrapper prefix only one side has), with `--model MODULE:FACTORY`
  (`analysis.loadcheck`).
- For `diff`: statistics that did not move while parameters trained, and statistics that moved
  without their counter, or the reverse (`analysis.diffnotes`).

Only the tensors that decide these are read: `running_mean`, `running_var`, `weight` and `bias`
of normalization layers (a few KiB each) and the `num_batches_tracked` scalars, through the scan
layer (`scan.norms`). Nothing here imports torch: `--model` arrives as a `ModelState` that
`annotate.expected_state` built from the user's module.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from bufinspect import dtypes
from bufinspect.analysis.align import align
from bufinspect.analysis.findings import module_entries, name_keys, plural, qualified
from bufinspect.model import Checkpoint, Entry, ModelState, Role
from bufinspect.scan.norms import AFFINE as _AFFINE
from bufinspect.scan.norms import COUNTER, STATS, read_counters, read_values

# An EMA / averaged copy is named like one: `ema`, `model_ema`, `state_dict_ema`, `ema_model`,
# `swa_model`, `averaged_model`, `average_model_state` (Lightning's StochasticWeightAveraging),
# `shadow`. Matched on whole words of a container path or of a key's first component, so a
# buffer such as `schema` or a key `ema` (no dot) is not mistaken for one.
_EMA_WORD = re.compile(r"(?<![a-z0-9])(ema|swa|avg|average|averaged|shadow|polyak)(?![a-z])")
# scalars an averaging wrapper keeps beside the copy (AveragedModel, timm ModelEmaV1..V3,
# ema_pytorch, mmengine ExponentialMovingAverage)
_WRAPPER_SCALARS = ("n_averaged", "num_updates", "updates", "decay", "step", "steps", "initted")
# a real file holds one or two copies and a few state dicts; a crafted one may hold thousands of
# EMA-named containers, and pairing is copies x candidates key alignments: bound both
_MAX_COPIES = 16
_MAX_CANDIDATES = 64


def is_ema_name(name: str) -> bool:
    """True for a container path or key component that names an EMA/averaged copy."""
    return bool(_EMA_WORD.search(name.lower().replace("-", "_")))


# ---- normalization layers and what their tensors hold ------------------------------------


@dataclass(frozen=True)
class NormLayer:
    """A module that keeps running statistics, and the tensors that decide its state."""

    container: str
    module: str  # key prefix of the layer inside its container ("" for a bare layer)
    mean: Entry
    var: Entry
    counter: Entry | None  # num_batches_tracked (FrozenBatchNorm and old files have none)
    weight: Entry | None  # affine parameters (or FrozenBatchNorm's weight/bias buffers)
    bias: Entry | None

    @property
    def label(self) -> str:
        return self.module or "(root)"


def _floating(e: Entry) -> bool:
    return dtypes.is_floating(e.dtype) and e.data is not None and e.numel > 0


def norm_layers(entries: Iterable[Entry]) -> list[NormLayer]:
    """Every module with both `running_mean` and `running_var` (BatchNorm*, SyncBatchNorm,
    InstanceNorm with track_running_stats, FrozenBatchNorm2d, ...), in file order.

    LayerNorm/GroupNorm keep no running statistics and never appear. Tensors whose role is
    `parameter` (by the module's own word) or `other` are not running statistics.
    """
    entries = entries if isinstance(entries, (list, tuple)) else list(entries)
    # (only modules with a running_mean qualify: 100,000 expert weights are not looked at)
    with_mean = {(e.container, e.module) for e in entries if e.name == "running_mean"}
    groups: dict[tuple[str, str], dict[str, Entry]] = {}
    for e in entries:
        if (e.name in STATS or e.name == COUNTER or e.name in _AFFINE) and (
                e.container, e.module) in with_mean:
            groups.setdefault((e.container, e.module), {}).setdefault(e.name, e)
    out = []
    for (container, module), g in groups.items():
        mean, var = g.get("running_mean"), g.get("running_var")
        if mean is None or var is None:
            continue
        if any(x.role in (Role.PARAMETER, Role.OTHER) for x in (mean, var)):
            continue
        if not (_floating(mean) and _floating(var)) or mean.shape != var.shape:
            continue
        counter = g.get(COUNTER)
        if counter is not None and (counter.numel != 1 or counter.data is None
                                    or counter.role is Role.OTHER):
            counter = None
        # per-channel affine tensors only: a module that keeps running statistics beside, say,
        # a convolution (kernel `weight` and a `bias` both random at init) says nothing by them
        weight, bias = (x if x is not None and _floating(x) and x.shape == mean.shape else None
                        for x in (g.get("weight"), g.get("bias")))
        if weight is None and "weight" in g:
            bias = None
        out.append(NormLayer(container, module, mean, var, counter, weight, bias))
    return out


@dataclass(frozen=True)
class LayerState:
    """What a normalization layer's tensors say about it."""

    layer: NormLayer
    at_init: bool  # running_mean all 0 and running_var all 1
    affine_trained: bool  # weight or bias holds more than one value
    counter: int | None  # num_batches_tracked, None when absent or unreadable
    stats_digest: bytes  # running_mean + running_var bytes
    affine_digest: bytes | None


def layer_states(layers: Sequence[NormLayer]) -> list[LayerState]:
    """Read what each layer needs (statistics, affine tensors, counter) and judge it."""
    wanted = [e for l in layers for e in (l.mean, l.var, l.weight, l.bias) if e is not None]
    values = read_values(wanted)
    counters = read_counters(l.counter for l in layers if l.counter is not None)
    out = []
    for l in layers:
        mean, var = values.get(id(l.mean)), values.get(id(l.var))
        if mean is None or var is None:
            continue
        affine = [values[id(e)] for e in (l.weight, l.bias) if e is not None and id(e) in values]
        # a one-channel layer is constant whatever happened to it: it never counts as trained
        trained = any(not v.constant() for v in affine) and l.mean.numel > 1
        out.append(LayerState(
            l, mean.constant(0.0) and var.constant(1.0), trained,
            counters.get(id(l.counter)) if l.counter is not None else None,
            mean.digest + var.digest,
            b"".join(v.digest for v in affine) if affine else None))
    return out


# ---- EMA / averaged copies ---------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """A module's state inside a container: the keys under `prefix` (all of them for "")."""

    container: str
    prefix: str
    entries: tuple[Entry, ...]
    file: str = ""  # set when the pair spans two files of one check

    @property
    def label(self) -> str:
        where = "/".join(p for p in (self.container, self.prefix.rstrip(".")) if p)
        if self.file:
            return f"{self.file}:{where}" if where else self.file
        return where or "(top level)"

    def local(self, key: str) -> str:
        return key[len(self.prefix):]


@dataclass(frozen=True)
class EmaPair:
    """An EMA/averaged copy and the model it follows, with the key alignment between them."""

    ema: View
    model: View
    ema_names: dict[str, str]  # EMA key -> common name
    model_names: dict[str, str]  # model key -> common name
    alignment: dict[str, Any]


def _views(entries: list[Entry]) -> dict[str, list[View]]:
    """container -> [the whole container, then one view per first key component]."""
    by_container: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        by_container[e.container].append(e)
    out = {}
    for c, es in by_container.items():
        groups: dict[str, list[Entry]] = defaultdict(list)
        for e in es:
            head, dot, _ = e.key.partition(".")
            if dot:
                groups[head + "."].append(e)
        out[c] = [View(c, "", tuple(es))] + [View(c, p, tuple(g)) for p, g in groups.items()]
    return out


def _copy_keys(view: View) -> list[Entry]:
    """The copy's module state, without the scalars its wrapper keeps beside it."""
    return [e for e in view.entries
            if not (e.numel <= 1 and view.local(e.key) in _WRAPPER_SCALARS)]


def ema_pairs(ck: Checkpoint, entries: list[Entry]) -> list[EmaPair]:
    """Find each EMA/averaged copy in a checkpoint and the model it follows.

    Copies are recognized by name: a container (`ema`, `model_ema`, `state_dict_ema`,
    `averaged_model`, ...) or a first key component (a LightningModule's `model_ema.`, an
    AveragedModel attribute `swa_model.`); Lightning's WeightAveraging callback saves the average
    in `state_dict` and the model in `current_model_state`. The model is the other module state
    (another container, or the rest of the same one) whose keys line up best with the copy's
    after removing wrapper prefixes (`module.` of timm's ModelEma and of AveragedModel,
    `_orig_mod.`); at least half of the copy's keys must line up. A copy container whose keys
    sit under one attribute (ema_pytorch's `ema_model.`) is tried under it when it does not line
    up whole.
    """
    views = _views(module_entries(ck, entries))
    lightning_avg = "state_dict" in views and "current_model_state" in views
    copies: list[tuple[View, ...]] = []  # each copy, with the views to try in turn
    for c, vs in views.items():
        whole = vs[0]
        if any(is_ema_name(part) for part in c.split("/")) or (lightning_avg
                                                               and c == "state_dict"):
            inner = max(vs[1:], key=lambda v: len(v.entries), default=None)
            copies.append((whole,) if inner is None or len(inner.entries) * 2 < len(
                whole.entries) else (whole, inner))
            continue
        copies += [(v,) for v in vs[1:] if is_ema_name(v.prefix.rstrip("."))
                   and len(v.entries) < len(whole.entries)]
    whole_copies = {alts[0].container for alts in copies if not alts[0].prefix}
    pairs = []
    for alts in sorted(copies, key=lambda a: -len(a[0].entries))[:_MAX_COPIES]:
        for copy in alts:
            pair = _pair(copy, views, whole_copies)
            if pair is not None:
                pairs.append(pair)
                break
    return pairs


def _pair(copy: View, views: dict[str, list[View]], whole_copies: set[str]) -> EmaPair | None:
    """The model state a copy follows (the best-aligned candidate), or None."""
    keys = [copy.local(e.key) for e in _copy_keys(copy)]
    if not keys:
        return None
    candidates: list[View] = []
    for c, vs in views.items():
        if c == copy.container:
            if copy.prefix and c not in whole_copies:  # the rest of the state dict, a sibling
                rest = tuple(e for e in vs[0].entries if not e.key.startswith(copy.prefix))
                candidates.append(View(c, "", rest))
                candidates += [v for v in vs[1:] if v.prefix != copy.prefix
                               and not is_ema_name(v.prefix.rstrip("."))]
        elif c not in whole_copies:
            candidates.append(vs[0])
    best = None
    for cand in sorted(candidates, key=lambda v: -len(v.entries))[:_MAX_CANDIDATES]:
        ckeys = [cand.local(e.key) for e in cand.entries]
        ma, mb, applied = align(keys, ckeys)
        common = len(set(ma.values()) & set(mb.values()))
        if common * 2 >= len(keys) and (best is None or common > best[0]):
            best = (common, cand, ma, mb, applied)
    if best is None:
        return None
    _, model, ma, mb, applied = best
    return EmaPair(copy, model, {copy.prefix + k: v for k, v in ma.items()},
                   {model.prefix + k: v for k, v in mb.items()}, applied)


# ---- findings for one checkpoint (and across the files of one check) ---------------------


@dataclass(frozen=True)
class Diagnosis:
    """One finding before `check` files it (with the id's severity from `FINDINGS`)."""

    id: str
    keys: tuple[str, ...]
    message: str


@dataclass
class FileState:
    """What the diagnostics read from one checkpoint, kept for comparisons across files."""

    path: str
    layers: dict[tuple[str, str], LayerState]  # (container, module) -> state
    pairs: list[EmaPair]


def _paired_layers(pair: EmaPair, layers: dict[tuple[str, str], LayerState],
                   model_layers: dict[tuple[str, str], LayerState] | None = None
                   ) -> list[tuple[LayerState, LayerState]]:
    """(EMA layer, model layer) for each normalization layer both sides hold (`model_layers`:
    the model's file's, when the copy is in another file)."""
    def name(names: dict[str, str], st: LayerState) -> str | None:
        return names.get(st.layer.mean.key)

    model_by_name = {}
    for st in (layers if model_layers is None else model_layers).values():
        if st.layer.container == pair.model.container:
            n = name(pair.model_names, st)
            if n is not None:
                model_by_name[n] = st
    out = []
    for st in layers.values():
        if st.layer.container == pair.ema.container:
            n = name(pair.ema_names, st)
            if n is not None and n in model_by_name:
                out.append((st, model_by_name[n]))
    return out


def _in_view(view: View, layer: NormLayer) -> bool:
    return layer.container == view.container and (layer.module + ".").startswith(view.prefix)


def analyze(ck: Checkpoint, entries: list[Entry]) -> tuple[list[Diagnosis], FileState]:
    """`stats-at-init`, `stats-never-tracked` and `ema-buffers-stale` for one checkpoint's
    selected entries; the state it read is returned for `compare_files`."""
    state = module_entries(ck, entries)
    layers = {(s.layer.container, s.layer.module): s for s in layer_states(norm_layers(state))}
    pairs = ema_pairs(ck, state)
    out: list[Diagnosis] = []
    copies = [p.ema for p in pairs]

    def in_copy(s: LayerState) -> bool:
        return any(_in_view(v, s.layer) for v in copies)

    # stats-at-init: per container, the layers (outside paired EMA copies) that never moved
    stale: dict[str, list[LayerState]] = defaultdict(list)
    totals: dict[str, int] = defaultdict(int)
    for s in layers.values():
        if not in_copy(s):
            totals[s.layer.container] += 1
            if s.at_init and s.affine_trained and not s.counter:
                stale[s.layer.container].append(s)
    for container, hit in stale.items():
        total = totals[container]
        where = f" in {container!r}" if container else ""
        counter = " and num_batches_tracked 0" if any(s.counter == 0 for s in hit) else ""
        out.append(Diagnosis(
            "stats-at-init", tuple(qualified(e) for s in hit for e in (s.layer.mean, s.layer.var)),
            f"{name_keys([s.layer.label for s in hit])} ({len(hit)} of "
            f"{plural(total, 'normalization layer')}{where}): running statistics still at "
            f"init (mean 0, var 1{counter}) while the affine parameters trained, so eval mode "
            f"normalizes with mean 0 / var 1. Usually: trained in eval mode or with frozen "
            f"norms, or statistics never loaded"))

    # stats-never-tracked: every counter of a (non-EMA) state dict is 0 while it trained (an
    # EMA's counters mean nothing: timm's ModelEmaV2 averages them and truncates to 0)
    by_container: dict[str, list[LayerState]] = defaultdict(list)
    for s in layers.values():
        if not _copy_file(ck.path) and not in_copy(s) and not is_ema_name(
                s.layer.container) and not any(
                is_ema_name(p) for p in s.layer.module.split(".")[:1]):
            by_container[s.layer.container].append(s)
    classes = {c.path: c.module_classes or {} for c in ck.containers}
    for container, states in by_container.items():
        # InstanceNorm never counts batches (see diff_notes): leave out layers known to be one
        counted = [s for s in states if s.counter is not None and "InstanceNorm"
                   not in classes.get(container, {}).get(s.layer.module, "")]
        if counted and all(s.counter == 0 for s in counted) and any(
                s.affine_trained for s in states):
            where = f" in {container!r}" if container else ""
            out.append(Diagnosis(
                "stats-never-tracked", tuple(qualified(s.layer.counter) for s in counted),
                f"num_batches_tracked is 0 on {'the' if len(counted) == 1 else 'all'} "
                f"{plural(len(counted), 'normalization layer')}"
                f"{where} while the parameters trained: no train-mode forward pass counted a "
                f"batch. Usually: trained in eval mode, or statistics copied or converted from "
                f"elsewhere (InstanceNorm never counts); it matters with momentum=None"))

    # ema-buffers-stale within the file
    for pair in pairs:
        out += _ema_findings(pair, layers)
    return out, FileState(ck.path, layers, pairs)


def _ema_findings(pair: EmaPair, layers: dict[tuple[str, str], LayerState],
                  model_layers: dict[tuple[str, str], LayerState] | None = None
                  ) -> list[Diagnosis]:
    out = []
    copy, model = pair.ema.label, pair.model.label
    how = _alignment_text(pair.alignment, ("the copy", "the model"))
    # buffers the model has that the copy lacks, in modules the copy does hold
    ema_common = set(pair.ema_names.values())
    ema_modules = {n.rpartition(".")[0] for n in ema_common}
    lacking = []
    for e in pair.model.entries:
        name = pair.model_names.get(e.key)
        if name is None or name in ema_common:
            continue
        is_buffer = e.role is Role.BUFFER or e.name in STATS or e.name == COUNTER
        if is_buffer and e.role is not Role.PARAMETER and name.rpartition(".")[0] in ema_modules:
            lacking.append(e)
    if lacking:
        where = f"{pair.model.file}:" if pair.model.file else ""
        out.append(Diagnosis(
            "ema-buffers-stale", tuple(where + qualified(e) for e in lacking),
            f"{copy!r} (averaged copy of {model!r}) lacks {plural(len(lacking), 'buffer')} the "
            f"model has: {name_keys([pair.model.local(e.key) for e in lacking])}{how}, so loading "
            f"it keeps whatever statistics the target model holds. Usually: the EMA was built "
            f"from named_parameters() only (average the state_dict(), or use timm ModelEmaV3 / "
            f"AveragedModel)"))
    stuck = [(e, m) for e, m in _paired_layers(pair, layers, model_layers)
             if e.at_init and e.affine_trained and not m.at_init]
    if stuck:
        out.append(Diagnosis(
            "ema-buffers-stale",
            tuple(qualified(x) for e, _ in stuck for x in (e.layer.mean, e.layer.var)),
            f"{copy!r} (averaged copy of {model!r}): running statistics of "
            f"{name_keys([e.layer.label for e, _ in stuck])} still at init while the model's moved"
            f"{how}, so the EMA evaluates with mean 0 / var 1. Usually: the EMA averages "
            f"parameters() but not buffers (use timm ModelEmaV3 or AveragedModel(use_buffers="
            f"True), or copy the buffers from the model)"))
    return out


def compare_files(states: Sequence[FileState]) -> list[tuple[str, Diagnosis]]:
    """`ema-buffers-stale` across the files of one `check`, in the order given: a copy whose
    statistics are byte-identical to an earlier file's while the model's statistics and the
    copy's parameters moved between the two. Returns (path, diagnosis) pairs."""
    out = []
    for i in range(1, len(states)):
        earlier, later = states[i - 1], states[i]
        before = {(p.ema.container, p.ema.prefix): p for p in earlier.pairs}
        for pair in later.pairs:
            old = before.get((pair.ema.container, pair.ema.prefix))
            if old is None:
                continue
            old_layers = {(e.layer.container, e.layer.module): (e, m)
                          for e, m in _paired_layers(old, earlier.layers)}
            frozen = []
            for e, m in _paired_layers(pair, later.layers):
                prev = old_layers.get((e.layer.container, e.layer.module))
                if prev is None:
                    continue
                pe, pm = prev
                if (e.stats_digest == pe.stats_digest and m.stats_digest != pm.stats_digest
                        and e.affine_digest is not None and e.affine_digest != pe.affine_digest):
                    frozen.append(e)
            if frozen:
                out.append((later.path, Diagnosis(
                    "ema-buffers-stale",
                    tuple(qualified(x) for e in frozen for x in (e.layer.mean, e.layer.var)),
                    f"{pair.ema.label!r} (averaged copy of {pair.model.label!r}): running "
                    f"statistics of {name_keys([e.layer.label for e in frozen])} byte-identical "
                    f"to {earlier.path} while the model's statistics and the copy's parameters "
                    f"moved, so its buffers are frozen at an earlier state. Usually: the EMA "
                    f"updates parameters() only")))
    return out


def _alignment_text(applied: dict[str, Any], sides: tuple[str, str]) -> str:
    parts = []
    for side, name in zip(("a", "b"), sides):
        for op in applied.get(side, ()):
            if op.startswith("strip "):
                parts.append(f"{op.removeprefix('strip ')!r} removed from {name}'s keys")
    return f" (keys aligned: {', '.join(parts)})" if parts else ""


# ---- the entry point for check ------------------------------------------------------------


def diagnose(checkpoints: Sequence[Checkpoint], selections: Sequence[list[Entry]],
             expected: ModelState | None = None, spec: str = "the model"
             ) -> list[tuple[str, Diagnosis]]:
    """Every buffer diagnosis for the checkpoints of one `check` (with the entries it selected
    from each), as (path, diagnosis) pairs; `expected` adds the `--model` key checks."""
    from bufinspect.analysis.loadcheck import model_findings

    out: list[tuple[str, Diagnosis]] = []
    states = []
    views = []
    for ck, entries in zip(checkpoints, selections, strict=True):
        found, state = analyze(ck, entries)
        states.append(state)
        views.append(_file_view(ck, entries))
        out += [(ck.path, d) for d in found]
        if expected is not None:
            out += [(ck.path, d) for d in model_findings(ck, entries, expected, spec)]
    separate = _separate_copies(states, views)
    # a copy in its own file: its stale layers are reported once, as ema-buffers-stale
    covered = {(path, k) for path, d in separate for k in d.keys}
    out = [(path, d) for path, d in out if d.id != "stats-at-init"
           or not {(path, k) for k in d.keys} <= covered]
    return out + compare_files(states) + separate


def _copy_file(path: str) -> bool:
    """A file (or folder) whose own name says it holds an EMA copy: `model_ema.pt`."""
    import os

    return is_ema_name(os.path.splitext(os.path.basename(os.path.normpath(path)))[0])


def _stem(path: str, drop_ema: bool = False) -> str:
    """A file's name without folder and extension, lower case (`drop_ema`: without the word
    that names it a copy, and the separator before it)."""
    import os

    stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0].lower()
    stem = stem.replace("-", "_")
    return re.sub(r"[_.]?" + _EMA_WORD.pattern, "", stem).strip("_.") if drop_ema else stem


def _file_view(ck: Checkpoint, entries: list[Entry]) -> View | None:
    """A file's largest module state dict, as a view named by the file."""
    by_container: dict[str, list[Entry]] = defaultdict(list)
    for e in module_entries(ck, entries):
        by_container[e.container].append(e)
    if not by_container:
        return None
    c, es = max(by_container.items(), key=lambda kv: len(kv[1]))
    return View(c, "", tuple(es), file=ck.path)


def _separate_copies(states: Sequence[FileState], views: Sequence[View | None]
                     ) -> list[tuple[str, Diagnosis]]:
    """`ema-buffers-stale` for a copy saved in a file of its own (`model_ema.pt` beside
    `model.pt`, both given to one check): a file whose name says EMA and that holds no pair
    itself is paired with the other file whose keys line up best."""
    out = []
    for i, (state, view) in enumerate(zip(states, views)):
        if view is None or state.pairs or not _copy_file(state.path):
            continue
        others = {v.file: v for j, v in enumerate(views[:_MAX_CANDIDATES])
                  if j != i and v is not None and not _copy_file(v.file)}
        # equally aligned files (every epoch of a run): the one named like the copy wins
        # (`epoch2_ema.pt` follows `epoch2.pt`, not the first file of the folder)
        named = _stem(state.path, drop_ema=True)
        others = dict(sorted(others.items(), key=lambda kv: _stem(kv[0]) != named))
        pair = _pair(view, {path: [v] for path, v in others.items()}, set())
        if pair is None:
            continue
        model_state = next(s for s in states if s.path == pair.model.file)
        out += [(state.path, d) for d in _ema_findings(pair, state.layers, model_state.layers)]
    return out
