"""Checkpoints -> CheckReport: device and dtype consistency, non-finite values, stale statistics.

Metadata findings read nothing but the listing (`analysis.findings`). The numeric findings
(NaN/Inf counts, negative running variances) come from one streamed pass over every floating
tensor (`scan.check_scan`): numpy on the CPU, or chunk by chunk through pinned host memory to the
GPU when one is present and `device` allows it. Both compute the same exact statistics, so their
findings are identical. The policy (`analysis.policy`) is built by the caller from flags and
`[tool.bufinspect.check]`.
"""

from __future__ import annotations

from typing import Callable, Sequence

from bufinspect import _gc
from bufinspect.analysis.diagnostics import diagnose
from bufinspect.analysis.findings import FINDINGS, metadata_findings, numeric_findings
from bufinspect.analysis.policy import Policy
from bufinspect.analysis.show import select
from bufinspect.model import Checkpoint, CheckReport, Finding, ModelState, ScanStats, Severity
from bufinspect.parallel import Work
from bufinspect.scan import check_scan, cuda_available, cuda_device_count, resolve_device, scannable


@_gc.paused()  # (the pass keeps what it builds until the report is done)
def check(checkpoints: Sequence[Checkpoint], policy: Policy | None = None, *,
          device: str = "auto", containers: Sequence[str] = (),
          progress: Callable[[int], None] | None = None, jobs: int = 1,
          work: Work | None = None, model: ModelState | None = None,
          model_spec: str = "the model") -> CheckReport:
    """Check one or more checkpoints and return one report.

    Args:
        checkpoints: loaded checkpoints (`bufinspect.load`; `bufinspect.check` takes paths).
        policy: expected dtypes/device, ignored ids and strictness (`analysis.policy.make_policy`
            builds one from flags and pyproject settings).
        device: where the numeric scan runs: `auto` (the GPU when torch sees one, else the
            CPU), `cpu`, or `cuda` (a `UsageError` when no GPU is usable).
        containers: only these state dicts inside each checkpoint (default: all).
        progress: called with a byte count after each streamed chunk.
        jobs: CPU workers for the numeric scan (the GPU path streams on one).
        work: how the scan is shared (`parallel.Work(jobs)` by default;
            `bufinspect.distributed.RankWork` shares it across torch.distributed ranks).
        model: what the user's model expects (`annotate.expected_state`): adds the
            `missing-key` / `unexpected-key` / `shape-mismatch` / `key-prefix` findings (apply
            its roles to the checkpoints first with `annotate.apply_module`).
        model_spec: how messages name the model (`MODULE:FACTORY`).

    Returns:
        A `CheckReport`; `report.ok` is the CI verdict, `report.to_dict()` the JSON document.

    Raises:
        UsageError: an unknown container, or `cuda` without a GPU.
    """
    policy = policy or Policy()
    where = resolve_device(device)
    # saved cuda indices are verified whenever a GPU is present, whatever runs the numeric scan
    gpus = cuda_device_count() if where.startswith("cuda") or cuda_available() else None
    findings: list[Finding] = []
    stats: dict[tuple[str, str, str], ScanStats] = {}
    cks = list(checkpoints)
    selected = [select(ck, containers=containers) for ck in cks]
    todo = [e for entries in selected for e in entries if scannable(e)]
    measured = check_scan(todo, where, progress, jobs, work) if todo else {}
    for ck, entries in zip(cks, selected, strict=True):
        findings += metadata_findings(ck, entries, gpus, policy)
        findings += numeric_findings(ck.path, entries, measured)
        for e in entries:
            if id(e) in measured:
                stats[(ck.path, e.container, e.key)] = measured[id(e)]
    # buffer diagnostics: stats-at-init, stats-never-tracked, ema-buffers-stale, --model keys
    findings += [Finding(d.id, FINDINGS[d.id][0], path, d.keys, d.message)
                 for path, d in diagnose(cks, selected, model, model_spec)]
    order = {s: i for i, s in enumerate(Severity)}
    path_order = {ck.path: i for i, ck in enumerate(cks)}
    kept = [f for f in findings if f.id not in policy.ignore]
    kept.sort(key=lambda f: (order[f.severity], path_order.get(f.path, 0)))
    return CheckReport(tuple(ck.path for ck in cks), where, tuple(kept), policy.strict, stats)
