"""Evidence -> role for every entry of a checkpoint: the heart of the product.

(A long module: the rules below read each other's votes, so they are kept together.)

Readers that hold the module itself (a pickled module, TorchScript, an export signature) set exact
roles. For plain state dicts the rules below decide what the file proves and leave the rest
`unknown`: a wrong definite role is a bug, `unknown` is an honest answer. Rules, strongest first:

- `metadata:bufinspect`: roles bufinspect itself wrote (sidecar or safetensors metadata), checked
  against the file's keys;
- `layer:<Class>`: a module's whole own key set, dimensions, dtype kinds, equal-shape groups and
  `_metadata` version match a torch.nn / torch.ao layer signature (bufinspect/data/layers.json,
  built by introspecting torch: scripts/make_layer_table.py, read by `formats.package_data`). A
  `bias` is optional in every signature that has one; besides torch.nn the table holds fused QAT
  modules (`ConvBn`, version 2), converted quantized layers (`quantized.*`: `scale` and
  `zero_point` are buffers), prune (`weight_orig` parameter, `weight_mask` buffer), old spectral /
  weight norm on every layer rank, parametrization originals of any rank, and the FrozenBatchNorm
  layout (running statistics are buffers; its weight and bias are left undecided: buffers there,
  parameters in an old BatchNorm);
- `dtype:<dtype>`: integer and bool tensors cannot be trainable parameters;
- `optimizer:param_names` / `optimizer:state-names` / `optimizer:state-shapes`: an optimizer
  saved beside the state dict names its parameters (`param_names`, or params keyed by name as
  torch.distributed.checkpoint's get_state_dict writes them, or state keyed by name), or its
  parameter ids and state shapes align with the state dict's keys: a key is a parameter when it
  is one in EVERY order-preserving alignment (the entry lands on it, or on a later own key of its
  module, since a module lists its parameters before its buffers);
- `pickle:Parameter` / `pickle:keep_vars`: a `keep_vars=True` state dict pickles parameters as
  `nn.Parameter`, so its plain tensors are buffers;
- `order:after-buffer` / `order:before-parameter`: inside one module's own keys a state dict
  lists parameters before buffers, so keys after a known buffer are buffers and keys before a
  known parameter are parameters (only where the file kept the state dict's order).

Two rules that disagree leave the entry `unknown` with evidence `conflict:<a>/<b>`.
Evidence strings are `kind:detail`; the kind (before the colon) is what the summary counts.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections import defaultdict
from functools import lru_cache
from typing import Any

from bufinspect import dtypes
from bufinspect.model import Checkpoint, Container, ContainerKind, Entry, Format, Role

_DIGITS = re.compile(r"\d+")
# formats whose state dicts keep the order `Module.state_dict()` produced
_ORDERED = {Format.TORCH_ZIP, Format.TORCH_LEGACY}
# optimizer state slots that have their parameter's shape
_PARAM_SHAPED = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg",
                 "acc_delta", "sum", "ax", "exp_inf", "grad_avg", "prev"}

Decision = tuple[Role, str]


def assign(checkpoint: Checkpoint, annotations: dict[str, dict[str, Role]] | None = None,
           *, in_place: bool = False) -> Checkpoint:
    """Return `checkpoint` with a role and evidence on every state-dict entry.

    `annotations` maps a container path to `{key: role}` that bufinspect wrote earlier (read from
    the file's sidecar or safetensors metadata by `formats.role_metadata`), used as exact evidence.
    `in_place`: the checkpoint comes straight from `formats.read` and nothing else holds its
    entries yet (`bufinspect.load`), so each entry is completed where it is rather than copied
    (a copy costs 0.6 us and ~700 bytes per tensor, 100,000 times in a large checkpoint). Only
    when every entry is its own object: one placed twice would carry its first role into the
    second inference.
    """
    if in_place:
        every = [e for c in checkpoint.containers for e in c.entries]
        in_place = len(set(map(id, every))) == len(every)
    state_dicts = [c for c in checkpoint.containers if c.kind is ContainerKind.STATE_DICT]
    optimizers = [c for c in checkpoint.containers if c.kind is ContainerKind.OPTIMIZER]
    ordered = checkpoint.format in _ORDERED
    out = []
    for c in checkpoint.containers:
        if c.kind is ContainerKind.STATE_DICT:
            paired = optimizers if len(state_dicts) == 1 else [
                o for o in optimizers if _names_fit(o, c)]
            ann = (annotations or {}).get(c.path)
            c = _infer_state_dict(c, paired, ordered, ann, in_place)
        out.append(c)
    return dataclasses.replace(checkpoint, containers=tuple(out))


# when rules agree, the strongest one is named
_RANK = {"module": 0, "metadata": 1, "optimizer": 2, "layer": 3, "dtype": 4, "order": 5}


class _Votes:
    """Decisions per key; a disagreement turns the key into a conflict (role unknown)."""

    def __init__(self) -> None:
        self.decided: dict[str, Decision] = {}
        self.conflicts: dict[str, str] = {}
        self.exact: set[str] = set()  # decided by the module itself: inference cannot overrule

    def add(self, key: str, role: Role, evidence: str, exact: bool = False) -> None:
        if key in self.conflicts or key in self.exact:
            return
        if exact:
            self.exact.add(key)
            self.decided[key] = (role, evidence)
            return
        have = self.decided.get(key)
        if have is None:
            self.decided[key] = (role, evidence)
        elif have[0] is not role:
            del self.decided[key]
            self.conflicts[key] = f"conflict:{have[1]}/{evidence}"
        elif _RANK.get(evidence.partition(":")[0], 9) < _RANK.get(have[1].partition(":")[0], 9):
            self.decided[key] = (role, evidence)

    def role(self, key: str) -> Role | None:
        d = self.decided.get(key)
        return d[0] if d else None

    def roles(self, own: list[Entry]) -> list[Role | None]:
        """`role` of each entry's key."""
        decided = self.decided
        return [decided[e.key][0] if e.key in decided else None for e in own]


def _infer_state_dict(c: Container, optimizers: list[Container], ordered: bool,
                      annotation: dict[str, Any] | None, in_place: bool = False) -> Container:
    entries = list(c.entries)
    votes = _Votes()
    unknown = Role.UNKNOWN
    for e in entries:
        if e.role is not unknown:  # a reader already knew
            votes.add(e.key, e.role, e.evidence, exact=True)
    if annotation:
        for key, role in annotation.items():
            votes.add(key, role, "metadata:bufinspect", exact=True)
    # (the loops below run once per tensor, 100,000 times in a mixture-of-experts checkpoint:
    # a fresh key's first vote is written straight into `decided`, which is what `add` does)
    decided, conflicts = votes.decided, votes.conflicts
    by_module: dict[str, list[Entry]] = {}
    for e in entries:
        if e.name == "_extra_state":  # get_extra_state(): module state, neither role
            conflicts.setdefault(e.key, "extra-state")
            continue
        own = by_module.get(e.module)
        if own is None:
            by_module[e.module] = [e]
        else:
            own.append(e)
    layer_matched: set[str] = set()  # modules of several keys that matched a layer
    versions = c.module_versions
    no_versions = versions is None
    single: dict[tuple, Decision | None] = {}  # one-tensor modules (MoE experts: 100k of them)
    for module, own in by_module.items():
        if len(own) == 1:  # decided by (name, shape, dtype, version) alone: matched once each
            e = own[0]
            version = None if no_versions else versions.get(module)
            if version is None or type(version) is int:
                sig = (e.name, e.shape, e.dtype, no_versions, version)
                decision = single.get(sig, single)
                if decision is single:
                    decision = single[sig] = match_layer(module, own, versions).get(e.key)
                if decision is not None:  # (not in `layer_matched`: one key witnesses no order)
                    if e.key in decided or e.key in conflicts:
                        votes.add(e.key, *decision)
                    else:
                        decided[e.key] = decision
                continue
        found = match_layer(module, own, versions)
        if found:
            layer_matched.add(module)
        for key, (role, evidence) in found.items():
            votes.add(key, role, evidence)
    by_dtype = {d: _dtype_decision(d) for d in {e.dtype for e in entries}}
    if any(by_dtype.values()):
        for e in entries:
            d = by_dtype[e.dtype]
            if d:
                votes.add(e.key, *d)
    order_ok = ordered and _order_consistent(entries, by_module, layer_matched, votes,
                                             c.module_versions is not None)
    for opt in optimizers:
        for key, (role, evidence) in _optimizer_evidence(entries, opt, votes, order_ok,
                                                         order_ok).items():
            votes.add(key, role, evidence)
    if order_ok:
        for module, own in by_module.items():
            for key, (role, evidence) in _by_order(own, votes).items():
                votes.add(key, role, evidence)
    out = []
    undecided, buffer = (unknown, "none"), Role.BUFFER
    for e in entries:
        key = e.key
        if key in conflicts:
            role, evidence = unknown, conflicts[key]
        else:
            role, evidence = decided.get(key, undecided)
        if role is e.role and evidence == e.evidence:
            out.append(e)
            continue
        persistent = True if role is buffer else None  # a state dict holds persistent ones
        if in_place:  # the entry itself completed (still frozen to everyone after `load`)
            d = e.__dict__
            d["role"], d["evidence"], d["persistent"] = role, evidence, persistent
            out.append(e)
        else:
            out.append(e.with_role(role, evidence, persistent))
    return dataclasses.replace(c, entries=tuple(out))


# ---- layer signatures ----------------------------------------------------------------------


@lru_cache(maxsize=65536)
def pattern(name: str) -> str:
    """A tensor name with digit runs replaced by `#` (`weight_ih_l1` -> `weight_ih_l#`)."""
    return _DIGITS.sub("#", name)


@lru_cache(maxsize=1)
def layer_table() -> dict[frozenset[str], list[dict[str, Any]]]:
    """The shipped signature table, indexed by the set of tensor-name patterns."""
    from bufinspect.formats.package_data import LAYER_TABLE, read_json

    doc = read_json(LAYER_TABLE)
    index: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
    for sig in doc["signatures"]:
        index[frozenset(sig["tensors"])].append(sig)
        optional = sig.get("optional") or ()  # a layer built with bias=False lacks its bias
        if optional:
            index[frozenset(sig["tensors"]) - frozenset(optional)].append(sig)
    return dict(index)


_KINDS = {"float": "float", "complex": "float", "int": "int", "uint": "int", "bool": "bool",
          "quantized": "quantized"}


@lru_cache(maxsize=256)
def _kind(dtype: str) -> str | None:
    d = dtypes.DTYPES.get(dtype)
    return None if d is None else _KINDS.get(d.kind)


def _fits(sig: dict[str, Any], names: tuple[str, ...], ndims: tuple[int, ...],
          kinds: tuple[str | None, ...], same: tuple[int, ...]) -> bool:
    tensors = sig["tensors"]
    for name, nd, k in zip(names, ndims, kinds):
        _, ndim, kind = tensors[pattern(name)]
        if (ndim is not None and nd != ndim) or k != kind:  # (None: any rank)
            return False
    if not sig["same_shape"]:
        return True
    index = {n: i for i, n in enumerate(names)}
    for a, b in sig["same_shape"]:
        for i, name in enumerate(names):
            if pattern(name) != a:
                continue
            digits = iter(_DIGITS.findall(name))
            j = index.get(re.sub("#", lambda _: next(digits, "#"), b))
            if j is not None and same[j] != same[i]:
                return False
    return True


@lru_cache(maxsize=1024)
def _label(classes: tuple[str, ...]) -> str:
    """`BatchNorm|InstanceNorm|SyncBatchNorm` from the classes of the matching signatures."""
    names = sorted({re.sub(r"[123]d$", "", c) for c in classes})
    public = [n for n in names if not n.startswith(("_", "NonDynamically"))] or names
    return "|".join(public[:3]) + ("|..." if len(public) > 3 else "")


def match_layer(module: str, own: list[Entry], versions: dict[str, int] | None
                ) -> dict[str, Decision]:
    """Roles for a module whose whole own key set matches torch.nn / torch.ao layer signatures."""
    names = tuple(e.name for e in own)
    candidates = _candidates(names)
    if versions is not None:  # (the saved version may be any pickled object: compared, not hashed)
        version = versions.get(module)
        keep = tuple(i for i, s in enumerate(candidates) if version == s["version"])
    else:
        keep = tuple(range(len(candidates)))
    if not keep:
        return {}
    # a network repeats a few layer structures thousands of times: each is matched once
    decided = _match(names, tuple(e.shape for e in own), tuple(e.dtype for e in own), keep)
    return {e.key: decided[i] for i, e in enumerate(own) if decided[i] is not None}


@lru_cache(maxsize=65536)
def _candidates(names: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    """Signatures whose tensor-name patterns are exactly these names' (unique names only)."""
    if len(set(names)) != len(names):
        return ()
    return tuple(layer_table().get(frozenset(pattern(n) for n in names), ()))


@lru_cache(maxsize=16384)
def _match(names: tuple[str, ...], shapes: tuple[tuple[int, ...], ...], dtypes: tuple[str, ...],
           keep: tuple[int, ...]) -> tuple[Decision | None, ...]:
    """Per name, the role every fitting signature agrees on (None: no agreement or no fit).
    `keep` indexes the candidate signatures whose version fits."""
    candidates = _candidates(names)
    first: dict[tuple[int, ...], int] = {}
    ndims = tuple(len(s) for s in shapes)
    kinds = tuple(_kind(d) for d in dtypes)
    same = tuple(first.setdefault(s, i) for i, s in enumerate(shapes))  # equal shapes, by index
    fitting = [candidates[i] for i in keep if _fits(candidates[i], names, ndims, kinds, same)]
    if not fitting:
        return (None,) * len(names)
    # named after the plainest fitting layers (lowest version: a Conv2d before a fused ConvBn2d,
    # when the file kept no `_metadata` to tell them apart)
    low = min(s["version"] for s in fitting)
    evidence = "layer:" + _label(tuple(c for s in fitting if s["version"] == low
                                       for c in s["classes"]))
    out: list[Decision | None] = []
    for name in names:
        roles = {s["tensors"][pattern(name)][0] for s in fitting}
        # "unknown" in a signature: that layout does not decide this tensor
        role = roles.pop() if len(roles) == 1 else None
        out.append((Role(role), evidence) if role in ("parameter", "buffer") else None)
    return tuple(out)


@lru_cache(maxsize=256)
def _dtype_decision(dtype: str) -> Decision | None:
    """Integer and bool tensors cannot be trainable parameters."""
    d = dtypes.DTYPES.get(dtype)
    if d is not None and d.kind in ("int", "uint", "bool"):
        return Role.BUFFER, f"dtype:{dtype}"
    return None


# ---- order ---------------------------------------------------------------------------------


def _order_consistent(entries: list[Entry], by_module: dict[str, list[Entry]],
                      layer_matched: set[str], votes: _Votes, has_metadata: bool) -> bool:
    """True when the keys are in `state_dict()` order: own keys contiguous, before descendants,
    parameters before buffers in every module whose roles are known; without `_metadata`, a
    layer holding both parameters and buffers must witness it."""
    if not has_metadata and not _witness(by_module, layer_matched, votes):
        return False  # (the checks below only ever return False: skip them, 100k modules)
    index = {e.key: i for i, e in enumerate(entries)}
    last: dict[str, int] = {}
    for module, own in by_module.items():
        end = index[own[-1].key]
        if end - index[own[0].key] + 1 != len(own):
            return False
        last[module] = end
    first: dict[str, int] = {}  # every module's first key (`_extra_state` keys included)
    for i, e in enumerate(entries):
        first.setdefault(e.module, i)
    above: dict[str, int] = {"": -1}  # module -> the last own key of any of its ancestors

    def ancestors_last(module: str) -> int:
        found = above.get(module)
        if found is None:  # one parent step per module (not a join per ancestor: 100k modules)
            parent = module.rpartition(".")[0]
            found = above[module] = max(last.get(parent, -1), ancestors_last(parent))
        return found

    for module, i in first.items():  # no ancestor's own key after a descendant's first key
        if ancestors_last(module) > i:
            return False
    for own in by_module.values():  # (the witness was settled at the top)
        if len(own) == 1:
            continue  # one key: no order inside it to break
        known = [r for r in votes.roles(own) if r is not None]
        if any(a is Role.BUFFER and b is Role.PARAMETER for a, b in zip(known, known[1:])):
            return False
    return True


def _witness(by_module: dict[str, list[Entry]], layer_matched: set[str], votes: _Votes) -> bool:
    """A layer-matched module whose own keys hold both a parameter and a buffer."""
    for module in layer_matched:
        own = by_module[module]
        if len(own) > 1:
            known = votes.roles(own)
            if Role.BUFFER in known and Role.PARAMETER in known:
                return True
    return False


def _by_order(own: list[Entry], votes: _Votes) -> dict[str, Decision]:
    roles = votes.roles(own)
    if None not in roles:
        return {}  # nothing left to decide
    out: dict[str, Decision] = {}
    if Role.BUFFER in roles:
        for e in own[roles.index(Role.BUFFER) + 1:]:
            out[e.key] = (Role.BUFFER, "order:after-buffer")
    if Role.PARAMETER in roles:
        last = len(roles) - 1 - roles[::-1].index(Role.PARAMETER)
        for e in own[:last]:
            out[e.key] = (Role.PARAMETER, "order:before-parameter")
    return {k: v for k, v in out.items() if votes.role(k) is None}


# ---- optimizer -----------------------------------------------------------------------------


def _names_fit(opt: Container, sd: Container) -> bool:
    keys = {e.key for e in sd.entries}
    names, _ = _param_names(opt, keys)
    return bool(names) and all(n in keys for n in names)


def _param_names(opt: Container, keys: set[str]) -> tuple[list[str], str]:
    """Parameter names an optimizer states: its param groups' `param_names` (or `params` keyed
    by name, as torch.distributed.checkpoint's get_state_dict writes), else its state keyed by
    name (`state.<name>.<slot>`, a DCP folder whose param groups are not tensors) when every
    such name is a key of the state dict."""
    names = [n for g in opt.param_groups or () for n in g.get("param_names") or ()]
    if names:
        return names, "optimizer:param_names"
    stated = []
    for e in opt.entries:
        name = e.key.removeprefix("state.").rpartition(".")[0]
        if name and not name.lstrip("-").isdigit() and name not in stated:
            stated.append(name)
    if stated and all(n in keys for n in stated):
        return stated, "optimizer:state-names"
    return [], ""


def _optimizer_evidence(entries: list[Entry], opt: Container, votes: _Votes, ordered: bool,
                        by_order: bool = False) -> dict[str, Decision]:
    """Parameters named by the optimizer, or placed by aligning its ids and state shapes."""
    groups = opt.param_groups or ()
    keys = {e.key for e in entries}
    names, evidence = _param_names(opt, keys)
    if names:
        if all(n in keys for n in names):
            return {n: (Role.PARAMETER, evidence) for n in names}
        return {}
    if not ordered:
        return {}  # alignment needs the state dict's own order
    ids = [p for g in groups for p in g.get("params") or ()]
    if not ids or len(set(ids)) != len(ids):
        return {}
    shapes: dict[int, set[tuple[int, ...]]] = defaultdict(set)
    for e in opt.entries:
        _, pid, slot = (e.key.split(".", 2) + ["", ""])[:3]
        if slot in _PARAM_SHAPED and pid.lstrip("-").isdigit():
            shapes[int(pid)].add(e.shape)
    want = [next(iter(shapes[p])) if len(shapes.get(p, ())) == 1 else None for p in ids]
    seen: set[Any] = set()
    cands = []
    for e in entries:
        alias = (e.data.storage_id, e.data.storage_offset, e.shape, e.dtype) if e.data else None
        if alias is not None and alias in seen:
            continue  # a tied parameter: model.parameters() yields it once
        if alias is not None:
            seen.add(alias)
        if votes.role(e.key) is Role.BUFFER or _kind(e.dtype) != "float" \
                or e.name == "_extra_state":
            continue
        cands.append(e)
    n, m = len(want), len(cands)
    if n > m:
        return {}

    def fits(i: int, j: int) -> bool:
        return want[i] is None or want[i] == cands[j].shape

    # the leftmost and rightmost order-preserving placement of every optimizer parameter
    left, j = [], 0
    for i in range(n):
        while j < m and not fits(i, j):
            j += 1
        if j == m:
            return {}  # no alignment: this optimizer does not describe this state dict
        left.append(j)
        j += 1
    right, j = [0] * n, m - 1
    for i in reversed(range(n)):
        while j >= 0 and not fits(i, j):
            j -= 1
        right[i] = j
        j -= 1
    # A candidate is a parameter in an alignment when the optimizer entry lands on it, or (the
    # state dict lists a module's parameters before its buffers) on a later own key of its
    # module. It is decided when that holds in EVERY alignment, i.e. when no alignment avoids
    # the run of candidates from it to its module's last one: entries 0..k-1 placed before
    # the run and k..n-1 after it, for some k (left and right grow with i: two bisections).
    last_of: dict[str, int] = {}
    for idx, e in enumerate(cands):
        last_of[e.module] = idx
    out = {}
    for idx, e in enumerate(cands):
        end = last_of[e.module] if by_order else idx
        most = bisect.bisect_left(left, idx)  # entries that fit before the run
        fewest = bisect.bisect_right(right, end)  # entries that cannot go after it
        if fewest > most:  # no k avoids the run: a parameter in every alignment
            out[e.key] = (Role.PARAMETER, "optimizer:state-shapes")
    return out
