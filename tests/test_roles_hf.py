"""`show --hf-config`: roles from the model that an HF folder's config.json describes."""

from __future__ import annotations

import pytest

transformers = pytest.importorskip("transformers")


def _tiny_bert(folder):
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=24,
                                  max_position_embeddings=32)
    model = transformers.BertForMaskedLM(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def test_hf_config_roles_exact(tmp_path, cli_json):
    model = _tiny_bert(tmp_path)
    weights = tmp_path / "model.safetensors"
    plain = cli_json("show", weights)
    doc = cli_json("show", weights, "--hf-config")
    truth = {k: "parameter" for k, _ in model.named_parameters(remove_duplicate=False)}
    truth.update({k: "buffer" for k, _ in model.named_buffers(remove_duplicate=False)})
    assert doc["entries"] and len(doc["entries"]) == len(plain["entries"])
    for e in doc["entries"]:
        assert e["evidence"] == "model:hf-config", e["key"]
        assert e["role"] == truth[e["key"]], e["key"]
    match = doc["model"]["containers"][0]
    assert match["file_only"] == [] and match["missing"] == []
    # BERT's position_ids is a non-persistent buffer: expected to be absent from the file
    assert any(k.endswith("position_ids") for k in match["nonpersistent_absent"])


def test_hf_config_is_opt_in_and_needs_config(tmp_path, cli, cli_json):
    _tiny_bert(tmp_path)
    doc = cli_json("show", tmp_path / "model.safetensors")
    assert all(e["evidence"] != "model:hf-config" for e in doc["entries"])
    (tmp_path / "config.json").unlink()
    r = cli("show", tmp_path / "model.safetensors", "--hf-config")
    assert r.exit_code == 2 and "config.json" in r.stderr
