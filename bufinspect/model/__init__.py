"""The model layer: what a checkpoint holds (`checkpoint`) and what the analyses report
(`reports`). Plain frozen dataclasses and str enums; no file I/O, no torch, no text formatting.
Every other layer imports from here; this package imports only `bufinspect.errors`."""

from __future__ import annotations

from bufinspect.model.checkpoint import (SCHEMA, Checkpoint, Container, ContainerKind, Entry,
                                         Format, Role, TensorData, TensorStats, json_number,
                                         summarize)
from bufinspect.model.reports import (DIFFERENT, SCOPE_ROLES, CheckReport, DiffEntry, DiffNote,
                                      DiffReport, FileError, Finding, ModelMatch, ModelState, ScanStats,
                                      Scope, Severity, ShowReport, Status, Tolerance, TrendReport,
                                      TrendRow, tolerances_for)

__all__ = [
    "DIFFERENT", "SCHEMA", "SCOPE_ROLES", "CheckReport", "Checkpoint", "Container",
    "ContainerKind", "DiffEntry", "DiffNote", "DiffReport", "Entry", "FileError", "Finding", "Format",
    "ModelMatch", "ModelState", "Role",
    "ScanStats", "Scope", "Severity", "ShowReport", "Status", "TensorData", "TensorStats",
    "Tolerance", "TrendReport", "TrendRow", "json_number", "summarize", "tolerances_for",
]
