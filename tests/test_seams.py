"""Where features built separately meet: the API and the CLI agree, formats and commands agree
(found by a fresh-eyes QA pass over the merged issues #11-#17)."""

from __future__ import annotations

import json
import shutil

import bufinspect


def test_api_check_of_a_folder_checks_every_checkpoint_in_it_like_the_cli(tmp_path, samples,
                                                                           cli_json):
    # a plain folder of separate checkpoints: `check DIR` checks each one; the API must not read
    # the folder as one unindexed "sharded" checkpoint made of its lone .safetensors file
    folder = tmp_path / "runs"
    folder.mkdir()
    for name in ("cnn_cuda1.pt", "cnn.safetensors", "bn_after_train.pt"):
        shutil.copy(samples / name, folder / name)
    doc = cli_json("check", folder, code=1)
    report = bufinspect.check(str(folder)).to_dict()
    assert report["paths"] == doc["paths"] == [str(folder / n) for n in
                                              ("bn_after_train.pt", "cnn.safetensors",
                                               "cnn_cuda1.pt")]
    assert report["findings"] == doc["findings"]
    assert report["ok"] is doc["ok"] is False


def test_show_values_that_are_not_finite_or_are_lists_of_flags_validate(tmp_path, cli_json):
    # `"loss": "nan"` is both a string and one of the non-finite spellings: a `oneOf` in the
    # schema's values rejected every training checkpoint whose loss (or best score) was NaN/inf
    import jsonschema
    import torch
    from helpers import schema
    from torch import nn

    path = tmp_path / "train.pt"
    torch.save({"model": nn.BatchNorm1d(2).state_dict(), "epoch": 3, "loss": float("nan"),
                "best": float("inf"), "worst": float("-inf"), "flags": [True, False],
                "mixed": [1, 0.5, float("nan")], "name": "run"}, path)
    doc = cli_json("show", path)
    assert doc["values"] == {"epoch": 3, "loss": "nan", "best": "inf", "worst": "-inf",
                             "flags": [True, False], "mixed": [1, 0.5, "nan"], "name": "run"}
    jsonschema.Draft202012Validator(schema()).validate(doc)


def test_a_closed_stdout_pipe_is_never_blamed_on_an_input_file(tmp_path, samples, cli):
    # `bufinspect diff --from-metrics m.json | head -1`: the broken pipe surfaced inside the
    # error handler as "error: m.json: Broken pipe", exit 2, as if the metrics file were bad
    import subprocess
    import sys

    metrics = tmp_path / "m.json"
    assert cli("diff", samples / "bn_before.pt", samples / "bn_after_train.pt", "--all",
               "--save-metrics", metrics).exit_code == 1
    runs = {}
    for args in (["diff", "--from-metrics", str(metrics)],
                 ["show", str(samples / "train_adam.pt")]):
        proc = subprocess.Popen([sys.executable, "-m", "bufinspect", *args, "--color", "never"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()  # the reader is gone before the first line is written
        stderr = proc.stderr.read().decode()
        runs[args[0]] = (proc.wait(), stderr)
    assert runs["diff"] == runs["show"] == (1, ""), runs


def test_annotate_says_why_a_module_file_or_a_folder_cannot_be_annotated(tmp_path, samples,
                                                                        cli):
    # a pickled whole module (or TorchScript) holds no state dict: annotate ran the model and
    # then said it "matches no key of the file"; a sharded folder was said to have exact roles
    import torch
    from helpers import save_sharded

    from sample_modules import BufferZoo

    module = tmp_path / "zoo_module.pt"
    shutil.copy(samples / "buffer_zoo_module.pt", module)
    scripted = tmp_path / "zoo_script.pt"
    torch.jit.save(torch.jit.script(BufferZoo()), str(scripted))
    for path in (module, scripted):
        result = cli("annotate", path, "--model", "sample_modules:BufferZoo")
        assert result.exit_code == 2
        assert "already exact" in result.stderr and "matches no key" not in result.stderr
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_sharded(BufferZoo().state_dict(), folder, 64)
    result = cli("annotate", folder, "--model", "sample_modules:BufferZoo")
    assert result.exit_code == 2
    assert "cannot annotate" in result.stderr and "exact" not in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*.json")) == ["model.safetensors.index.json"]


def test_lightning_model_checkpoint_scores_are_not_a_second_module_state_dict(tmp_path, cli,
                                                                               cli_json):
    # every .ckpt written with a ModelCheckpoint(monitor=...) keeps `best_k_models`, a dict of
    # file path -> score tensor: read as a module state dict, it made `diff` and `check --model`
    # refuse the file ("holds several module state dicts") and its scores role `unknown`
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model(torch.randn(5, 3))
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    callback = "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}"
    ckpt = tmp_path / "epoch=2-step=30.ckpt"
    torch.save({"epoch": 2, "global_step": 30, "pytorch-lightning_version": "2.4.0",
                "state_dict": model.state_dict(),
                "callbacks": {callback: {
                    "best_model_score": torch.tensor(0.2), "best_model_path": str(ckpt),
                    "best_k_models": {str(ckpt): torch.tensor(0.2),
                                      str(tmp_path / "epoch=1-step=20.ckpt"): torch.tensor(0.3)},
                    "kth_value": torch.tensor(0.3)}}}, ckpt)
    doc = cli_json("show", ckpt)
    modules = [c["path"] for c in doc["containers"] if c["kind"] == "state_dict"]
    assert modules == ["state_dict"]
    scores = [e for e in doc["entries"] if e["container"].endswith("best_k_models")]
    assert len(scores) == 2 and {e["role"] for e in scores} == {"other"}
    diff = cli_json("diff", plain, ckpt, "--all")
    assert diff["summary"]["equal"] == 7 and diff["identical"] is True


def test_a_long_finding_message_is_printed_whole_in_every_human_format(tmp_path, samples):
    # finding messages were cut like a name from a file (300 characters): the missing-key
    # message of `check --model` lost its advice ("... (64 more characters)"); a message is
    # bounded, but far above what ordinary names make
    import torch
    from typer.testing import CliRunner

    from bufinspect.cli import app
    from sample_modules import SmallCNN

    sd = {"model." + k: v for k, v in SmallCNN().state_dict().items()}
    path = tmp_path / "wrapped.pt"
    torch.save(sd, path)
    json_doc = CliRunner().invoke(app, ["check", str(path), "--model", "sample_modules:SmallCNN",
                                        "--format", "json"])
    findings = json.loads(json_doc.stdout)["findings"]
    messages = {f["id"]: f["message"] for f in findings}
    assert len(messages["missing-key"]) > 300
    for fmt in ("table", "markdown", "github"):
        result = CliRunner().invoke(app, ["check", str(path), "--model", "sample_modules:SmallCNN",
                                          "--format", fmt], env={"COLUMNS": "2000"})
        assert result.exit_code == 1
        assert "more characters" not in result.stdout
        assert messages["missing-key"].endswith("load with strict=False and fill it in)")
        assert "load with strict=False and fill it in)" in " ".join(result.stdout.split())


def test_diff_stat_counts_nan_changes_as_a_count(tmp_path, cli):
    # the largest change of a module whose tensor gained a NaN read 'nonfinite 1.000'
    import torch

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"bn.running_var": torch.ones(3), "bn.num_batches_tracked": torch.tensor(1)}, a)
    torch.save({"bn.running_var": torch.tensor([1.0, float("nan"), 1.0]),
                "bn.num_batches_tracked": torch.tensor(1)}, b)
    result = cli("diff", a, b, "--all", "--stat")
    assert result.exit_code == 1
    assert "1 NaN/inf (running_var)" in result.stdout and "1.000" not in result.stdout


def test_diff_notes_follow_the_selection_alike_live_and_from_saved_metrics(tmp_path, cli):
    # frozen BatchNorm, trained parameters: `--role buffer` (which runs in the `all` scope)
    # judged "parameters changed" from the selected buffers alone and lost the stats-frozen
    # note; `--from-metrics` kept the whole diff's notes for any view, even a view without a
    # single running statistic
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    a, b, saved = tmp_path / "pre.pt", tmp_path / "ft.pt", tmp_path / "m.json"
    torch.save(model.state_dict(), a)
    with torch.no_grad():
        model[0].weight.add_(0.1)
        model[3].weight.mul_(2)
    torch.save(model.state_dict(), b)
    assert cli("diff", a, b, "--save-metrics", saved).exit_code == 0

    def notes(*args: str) -> list[str]:
        result = cli("diff", *args, "--format", "json")
        return [n["message"] for n in json.loads(result.stdout).get("notes", [])]

    frozen = notes(a, b)
    assert len(frozen) == 1 and "all 2 running statistics of 1" in frozen[0]
    for view in (["--role", "buffer"], ["--filter", "1.*"]):
        assert notes(a, b, *view) == notes("--from-metrics", saved, *view) == frozen, view
    for view in (["--role", "parameter"], ["--filter", "3.*"]):
        assert notes(a, b, *view) == notes("--from-metrics", saved, *view) == [], view


def test_an_ema_file_of_its_own_pairs_with_the_file_named_like_it_in_check_dir(tmp_path, cli):
    # `check runs/` with epoch1.pt, epoch2.pt, epoch2_ema.pt: every file lines up equally with
    # the copy, and it was paired with the first one (epoch1.pt), naming the wrong model
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    runs = tmp_path / "runs"
    runs.mkdir()
    for epoch in (1, 2):
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(4, 3, 6, 6)).square().mean().backward()
            opt.step()
        torch.save(model.state_dict(), runs / f"epoch{epoch}.pt")
    stale = {k: fresh[k] if k.startswith("1.") and "running" in k or "num_batches" in k else v
             for k, v in model.state_dict().items()}
    torch.save(stale, runs / "epoch2_ema.pt")
    result = cli("check", runs, "--format", "json")
    found = [f for f in json.loads(result.stdout)["findings"] if f["id"] == "ema-buffers-stale"]
    assert len(found) == 1, found
    assert "epoch2.pt" in found[0]["message"] and "epoch1.pt" not in found[0]["message"]
