"""`check --model`: would each file load strictly into the user's model? `missing-key`,
`unexpected-key`, `shape-mismatch` and `key-prefix`, with keys aligned as `diff` aligns them and
the model's own load code asked where it can be (`ModelState.verdict`, built by
`annotate.expected_state`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

from bufinspect.analysis.align import align
from bufinspect.analysis.diagnostics import Diagnosis, _alignment_text
from bufinspect.analysis.findings import module_entries, name_keys, plural, qualified
from bufinspect.model import Checkpoint, Entry, ModelState


def model_findings(ck: Checkpoint, entries: list[Entry], expected: ModelState,
                   spec: str = "the model") -> list[Diagnosis]:
    """`missing-key`, `unexpected-key`, `shape-mismatch` and `key-prefix` for each module state
    dict of the file that the model recognizes (any key in common after alignment); when none
    does, for the largest one. Keys are aligned as `diff` aligns them (`module.`/`_orig_mod.`
    removed from the side that alone has them), and the alignment is reported."""
    groups: dict[str, list[Entry]] = defaultdict(list)
    for e in module_entries(ck, entries):
        if e.persistent is not False:
            groups[e.container].append(e)
    want = list(expected.shapes)
    results = []
    for container, es in groups.items():
        ma, mb, applied = align([e.key for e in es], want)
        common = set(ma.values()) & set(mb.values())
        results.append((len(common), container, es, ma, mb, applied))
    if not results:
        return []
    chosen = [r for r in results if r[0] > 0] or [max(results, key=lambda r: len(r[2]))]
    out = []
    for _, container, es, ma, mb, applied in chosen:
        versions = ck.container(container).module_versions
        out += _load_findings(container, es, ma, mb, applied, expected, spec, versions)
    return out


def _load_findings(container: str, es: list[Entry], ma: dict[str, str], mb: dict[str, str],
                   applied: dict[str, Any], expected: ModelState, spec: str,
                   versions: dict[str, int] | None = None) -> list[Diagnosis]:
    where = f" {container!r}" if container else ""
    file_by_name = {ma[e.key]: e for e in es}
    model_by_name = {v: k for k, v in mb.items()}
    # the file's tensors under the model's names (unmatched ones under their aligned names),
    # in the model's shape where the shapes differ: shape-mismatch is judged below
    tensors = {}
    for name, e in file_by_name.items():
        key = model_by_name.get(name, name)
        want = expected.shapes.get(key)
        tensors[key] = (want if want is not None and name in model_by_name else e.shape, e.dtype)
    strip = [op.removeprefix("strip ") for op in applied.get("a", ()) if op.startswith("strip ")]
    wrap = [op.removeprefix("strip ") for op in applied.get("b", ()) if op.startswith("strip ")]
    if versions and (strip or wrap):  # `_metadata` module names follow the keys' alignment
        renamed = {}
        for m, v in versions.items():
            for p in strip:
                m = m[len(p):] if m.startswith(p) else ("" if m + "." == p else m)
            for p in reversed(wrap):
                m = p + m if m else p.rstrip(".")
            renamed[m] = v
        versions = renamed
    verdict = expected.verdict(tensors, versions) if expected.verdict is not None else None
    how = _alignment_text(applied, ("the file", "the model"))
    out = []
    prefixes, model_prefixes = strip, wrap
    if prefixes or model_prefixes:
        if prefixes:
            what = (f"every key of the state dict{where} starts with "
                    f"{''.join(prefixes)!r}, which the model's keys lack (a DDP / torch.compile "
                    f"wrapper saved it)")
            fix = (f"remove it before loading (torch.nn.modules.utils."
                   f"consume_prefix_in_state_dict_if_present(sd, {prefixes[0]!r}))")
        else:
            what = (f"every key of {spec} starts with {''.join(model_prefixes)!r}, which the "
                    f"state dict{where} lacks (the model is wrapped)")
            fix = "load into the unwrapped module (model.module / model._orig_mod)"
        out.append(Diagnosis(
            "key-prefix", (),
            f"{what}: load_state_dict(strict=True) reports every key missing; {fix}. The other "
            f"key checks compare keys without it"))
    missing = []
    for name, key in model_by_name.items():
        absent = key in verdict[0] if verdict is not None else name not in file_by_name
        if not absent or key.endswith("_extra_state"):  # extra state is not a tensor entry
            continue
        if any(mb.get(a) in file_by_name for a in expected.aliases.get(key, ())):
            continue  # a tied tensor saved under one of its names (safetensors dedups ties)
        missing.append(key)
    if missing:
        nb = sum(1 for k in missing if k in expected.buffers)
        kinds = ", ".join(x for x in (
            plural(nb, "persistent buffer") if nb else "",
            plural(len(missing) - nb, "parameter") if len(missing) > nb else "") if x)
        cause = ("a buffer registered after the checkpoint was saved (persistent=False if it "
                 "is derived, or load with strict=False and fill it in)"
                 if nb else "the file comes from another version or configuration of the model")
        out.append(Diagnosis(
            "missing-key", tuple(missing),
            f"{spec} expects {kinds} that the state dict{where} lacks: {name_keys(missing, 5)}"
            f"{how}; load_state_dict(strict=True) raises 'Missing key(s)'. Usually: {cause}"))
    if verdict is not None:
        unexpected = [e for e in es if model_by_name.get(ma[e.key], ma[e.key]) in verdict[1]]
    else:
        unexpected = [e for e in es if ma[e.key] not in model_by_name]
    if unexpected:
        out.append(Diagnosis(
            "unexpected-key", tuple(qualified(e) for e in unexpected),
            f"the state dict{where} holds {plural(len(unexpected), 'key')} that {spec} does "
            f"not have: {name_keys([e.key for e in unexpected], 5)}{how}; load_state_dict("
            f"strict=True) raises 'Unexpected key(s)'. Usually: a layer or buffer removed or "
            f"renamed since the checkpoint was saved, or state of another model"))
    mismatched = []
    for name, e in file_by_name.items():
        key = model_by_name.get(name)
        if key is None:
            continue
        want = expected.shapes[key]
        if want is None or tuple(e.shape) == want or (want == () and tuple(e.shape) == (1,)):
            continue  # lazy modules take any shape; a (1,) tensor loads into a scalar
        mismatched.append((e, want))
    if mismatched:
        detail = [f"{e.key} {_fmt(e.shape)} vs {_fmt(w)}" for e, w in mismatched]
        out.append(Diagnosis(
            "shape-mismatch", tuple(qualified(e) for e, _ in mismatched),
            f"{plural(len(mismatched), 'tensor')} of the state dict{where} differ in shape "
            f"from {spec} (file vs model): {name_keys(detail, 4)}{how}; load_state_dict raises "
            f"'size mismatch'. Usually: a changed layer size (classes, width, vocabulary)"))
    return out


def _fmt(shape: Sequence[int]) -> str:
    return str(tuple(shape))
