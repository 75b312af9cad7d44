"""The installed transformers library's own checkpoint-key renaming, for `show --hf-config`.

transformers 5 loads checkpoints saved under a model's original hub names (DETR's
`backbone.conv_encoder.model.*`, ViT's `embeddings.*` without the `vit.` prefix, ...) by
renaming their keys on load (`conversion_mapping.get_model_conversion_mapping` +
`core_model_loading.rename_source_key`). `--hf-config` applies the same renaming, so the model
built from `config.json` lines up with the file's keys. Only the library's code runs (opt-in,
like `--hf-config` itself); older transformers without these functions rename nothing.
"""

from __future__ import annotations

from typing import Any, Callable


def key_renamer(model: Any) -> Callable[[str], str] | None:
    """A function mapping a file key to the model key transformers would load it into."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (WeightConverter, WeightRenaming,
                                                     rename_source_key)
    except ImportError:
        return None
    try:
        transforms = get_model_conversion_mapping(model)
    except Exception:  # a model the library cannot describe: no renaming
        return None
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", None) or None
    known = {k: True for k in model.state_dict(keep_vars=True)}
    for k, _ in model.named_buffers(remove_duplicate=False):  # non-persistent ones too
        known.setdefault(k, True)

    def rename(key: str) -> str:
        try:
            return rename_source_key(key, renamings, converters, base_model_prefix=prefix,
                                     meta_state_dict=known)[0]
        except Exception:  # the library's own error on one odd key: leave it as it is
            return key

    return rename
