"""Analyses: checkpoints in, reports out (`show`, `diff`, `check`, `trend`).

They take loaded `Checkpoint`s (never paths), read tensor data only through `bufinspect.scan`,
and return the report types of `bufinspect.model`. Loading, configuration files, saved metrics
and annotation sidecars are read at the edge (`bufinspect.formats`, called from the CLI and from
the path-taking conveniences in `bufinspect/__init__.py`).
"""
