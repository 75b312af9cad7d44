"""The CI integrations as shipped: the composite GitHub Action (action.yml) and the pre-commit
hook (.pre-commit-hooks.yaml).

The action's shell steps are taken from action.yml and run here by bash as a runner runs them
(`bash --noprofile --norc -eo pipefail`), with the `${{ }}` expressions they use filled in from
the inputs: the install step really installs bufinspect from this checkout into a fresh venv,
and the run step really runs check and diff. The hook runs through `pre-commit try-repo` on a
scratch git repository; it skips where pre-commit is missing or cannot install its environment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fresh_venv

yaml = pytest.importorskip("yaml")

ROOT = fresh_venv.ROOT
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
S = "sample_checkpoints/"


# ---- the action file ----------------------------------------------------------------------

def test_action_structure():
    assert ACTION["name"] and ACTION["description"]
    inputs = ACTION["inputs"]
    assert set(inputs) == {"command", "paths", "args", "python-version", "source", "version"}
    for name, spec in inputs.items():
        assert spec.get("description"), name
        assert spec.get("required", False) or "default" in spec, name
    assert inputs["paths"]["required"] is True and inputs["command"]["default"] == "check"
    runs = ACTION["runs"]
    assert runs["using"] == "composite"
    setup = runs["steps"][0]
    assert setup["uses"].startswith("actions/setup-python@")
    assert setup["with"]["python-version"] == "${{ inputs.python-version }}"
    assert "inputs.python-version != ''" in setup["if"]
    shell_steps = [s for s in runs["steps"] if "run" in s]
    assert [s["id"] for s in shell_steps] == ["install", "run"]
    for step in shell_steps:
        assert step["shell"] == "bash"
        # inputs reach the scripts through env only: nothing a workflow passes is pasted into code
        assert not EXPR.search(step["run"]), step["id"]
    for expr in EXPR.findall((ROOT / "action.yml").read_text()):
        m = re.fullmatch(r"inputs\.([\w-]+)( != '')?", expr)
        assert (m and m.group(1) in inputs) or expr in (
            "github.action_path", "runner.temp", "steps.install.outputs.bin",
            "steps.run.outputs.exit-code"), expr
    assert ACTION["outputs"]["exit-code"]["value"] == "${{ steps.run.outputs.exit-code }}"
    assert "--format github" in shell_steps[1]["run"]


def test_readme_documents_every_input():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### GitHub Action\n"):]
    section = section[:section.index("\n### ", 4)]
    for name in ACTION["inputs"]:
        assert f"`{name}`" in section, name


def test_ci_runs_the_readme_commands():
    """.ci/run runs the README's two commands as written, with its Python's pip and pytest."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("```bash\n") + 8:]
    first, second = block[:block.index("```")].strip().splitlines()
    assert first.startswith("pip install ") and "bufinspect show sample_checkpoints/" in first
    assert second == "python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert '"$py" -m ' + first in ci.splitlines()
    assert any(line.startswith('"$py" -m pytest') for line in ci.splitlines())


# ---- running the action's steps -----------------------------------------------------------

class Runner:
    """Runs action.yml's shell steps with given inputs, as a GitHub runner would."""

    def __init__(self, tmp: Path, action_path: Path):
        self.tmp, self.action_path = tmp, action_path
        self.outputs: dict[str, dict[str, str]] = {}

    def _value(self, expr: str, inputs: dict[str, str]) -> str:
        if expr.startswith("inputs."):
            name = expr.removeprefix("inputs.")
            spec = ACTION["inputs"][name]
            return inputs.get(name, str(spec.get("default", "")))
        if expr == "github.action_path":
            return str(self.action_path)
        if expr == "runner.temp":
            return str(self.tmp)
        m = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr)
        assert m, f"action.yml uses {expr!r}, which this test cannot provide"
        return self.outputs.get(m.group(1), {}).get(m.group(2), "")

    def step(self, step_id: str, **inputs: str) -> subprocess.CompletedProcess:
        step = next(s for s in ACTION["runs"]["steps"] if s.get("id") == step_id)
        out = self.tmp / f"github_output_{step_id}"
        out.write_text("")
        env = fresh_venv.clean_env(GITHUB_OUTPUT=str(out), RUNNER_TEMP=str(self.tmp),
                                   GITHUB_ACTION_PATH=str(self.action_path),
                                   CUDA_VISIBLE_DEVICES="")
        for k, v in step.get("env", {}).items():
            env[k] = EXPR.sub(lambda m: self._value(m.group(1), inputs), str(v))
        script = self.tmp / f"{step_id}.sh"
        script.write_text(step["run"])
        r = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
        self.outputs[step_id] = dict(line.split("=", 1) for line in out.read_text().splitlines())
        return r


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """The action checked out (as GitHub does into its action path) and its install step run."""
    tmp = tmp_path_factory.mktemp("action")
    r = Runner(tmp, fresh_venv.project_copy(tmp / "bufinspect-action"))
    installed = r.step("install", source="action")
    if installed.returncode != 0:
        fresh_venv.skip_if_offline(Path(sys.executable))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert installed.stdout.strip().startswith("bufinspect ")  # `bufinspect --version`
    return r


@pytest.mark.slow
def test_action_installs_the_light_core(runner):
    bin_dir = Path(runner.outputs["install"]["bin"])
    assert bin_dir == fresh_venv.bin_dir(runner.tmp / "bufinspect-venv")
    fresh_venv.assert_light(bin_dir / "python")


@pytest.mark.slow
@pytest.mark.parametrize("inputs, argv, code", [
    ({"paths": f"{S}*.pt\n{S}*.safetensors"},
     ["check", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / S).glob("*.pt")),
      f"{S}cnn.safetensors"], 1),
    ({"paths": f"{S}**/bn_before.pt", "args": "--expect-device cpu --strict"},
     ["check", f"{S}bn_before.pt", "--expect-device", "cpu", "--strict"], 0),
    ({"paths": f"{S}bn_after_train.pt", "args": "--expect-dtype  float16\t--strict"},
     ["check", f"{S}bn_after_train.pt", "--expect-dtype", "float16", "--strict"], 1),
    ({"command": "diff", "paths": f"{S}bn_before.pt {S}bn_after_train.pt", "args": "--all"},
     ["diff", f"{S}bn_before.pt", f"{S}bn_after_train.pt", "--all"], 1),
    ({"command": "diff", "paths": f"{S}bn_before.pt {S}bn_before.pt"},
     ["diff", f"{S}bn_before.pt", f"{S}bn_before.pt"], 0),
])
def test_action_runs_check_and_diff(runner, cli, monkeypatch, inputs, argv, code):
    """The run step prints what `bufinspect ... --format github` prints, with its exit code."""
    r = runner.step("run", **inputs)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    expected = cli(*argv, "--format", "github")
    assert expected.exit_code == code
    assert r.returncode == code, r.stderr
    assert (r.stdout, r.stderr) == (expected.stdout, expected.stderr)
    assert r.stdout.startswith("::") or (code == 0 and "OK" in r.stderr)
    assert runner.outputs["run"] == {"exit-code": str(code)}


@pytest.mark.slow
@pytest.mark.parametrize("inputs, says", [
    ({"command": "show", "paths": f"{S}bn_before.pt"}, "command must be check or diff"),
    ({"command": "diff", "paths": f"{S}bn_before.pt"}, "diff takes two paths (A B), got 1"),
    ({"paths": " \n "}, "no checkpoint matches paths"),
    ({"paths": f"{S}no_such_*.pt {S}*.nothing"}, "no checkpoint matches paths"),
])
def test_action_refuses_bad_inputs(runner, inputs, says):
    r = runner.step("run", **inputs)
    assert r.returncode == 2 and r.stdout.startswith("::error title=bufinspect action::")
    assert says in r.stdout
    assert runner.outputs["run"] == {"exit-code": "2"}


@pytest.mark.slow
def test_action_missing_file_fails_the_step(runner, cli, monkeypatch):
    """A plain path that is missing fails; a pattern that matches nothing is dropped."""
    r = runner.step("run", paths=f"{S}no_such.pt")
    assert r.returncode == 2 and f"{S}no_such.pt" in r.stderr
    r = runner.step("run", paths=f"{S}bn_before.pt {S}*.nothing")
    monkeypatch.chdir(ROOT)
    expected = cli("check", f"{S}bn_before.pt", "--format", "github")
    assert (r.returncode, r.stdout, r.stderr) == (0, expected.stdout, expected.stderr)


# ---- the pre-commit hook ------------------------------------------------------------------

def test_hook_definition():
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    hook, = hooks
    assert hook["id"] == "bufinspect-check" and hook["entry"] == "bufinspect check"
    assert hook["language"] == "python" and "additional_dependencies" not in hook
    for name in ("a.pt", "b.pth", "c.bin", "d.ckpt", "e.safetensors"):
        assert re.search(hook["files"], name), name
    assert not re.search(hook["files"], "model.py")


def _pre_commit() -> list[str]:
    given = os.environ.get("BUFINSPECT_PRE_COMMIT")
    if given:
        return [given]
    found = shutil.which("pre-commit")
    if found:
        return [found]
    pytest.importorskip("pre_commit", reason="pre-commit is not installed (.ci/run installs it)")
    return [sys.executable, "-m", "pre_commit"]


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=bufinspect tests", "-c", "user.email=tests@invalid",
                    "-c", "commit.gpgsign=false", *args], cwd=cwd, check=True,
                   capture_output=True, timeout=120)


@pytest.mark.slow
def test_pre_commit_try_repo(tmp_path):
    """The hook from a scratch clone of this project, on staged checkpoints of a scratch repo."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    pre_commit = _pre_commit()
    hook_repo = fresh_venv.project_copy(tmp_path / "hook-repo")
    _git(hook_repo, "init", "-q")
    _git(hook_repo, "add", "-A")
    _git(hook_repo, "commit", "-q", "-m", "bufinspect")
    work = tmp_path / "work"
    work.mkdir()
    _git(work, "init", "-q")
    shutil.copy(ROOT / S / "bn_before.pt", work / "clean.pt")
    shutil.copy(ROOT / S / "cnn_cuda1.pt", work / "bad.pt")
    (work / "notes.txt").write_text("not a checkpoint\n")
    _git(work, "add", "-A")
    env = fresh_venv.clean_env(PRE_COMMIT_HOME=str(tmp_path / "cache"), CUDA_VISIBLE_DEVICES="",
                               PIP_LOG=str(tmp_path / "pip.log"))

    def try_repo(*files: str) -> subprocess.CompletedProcess:
        return subprocess.run([*pre_commit, "try-repo", str(hook_repo), "bufinspect-check",
                               "--verbose", "--files", *files], cwd=work, env=env,
                              capture_output=True, text=True, timeout=900)

    r = try_repo("clean.pt", "bad.pt", "notes.txt")
    if r.returncode == 3 and "Installing environment" in r.stdout:
        pytest.skip("pre-commit could not install the hook's environment: "
                    + r.stdout.strip().splitlines()[-1])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "bufinspect check" in r.stdout and "Failed" in r.stdout
    assert "bad.pt" in r.stdout and "mixed-devices" in r.stdout
    assert "notes.txt" not in r.stdout.split("bufinspect check", 1)[1]  # not a checkpoint
    # try-repo builds the hook's environment in a directory it deletes: pip's own log says what
    # went into it
    installed = [line.split("Successfully installed", 1)[1].split()
                 for line in (tmp_path / "pip.log").read_text().splitlines()
                 if "Successfully installed" in line]
    assert any(any(p.startswith("bufinspect-") for p in names) for names in installed), installed
    heavy = [p for names in installed for p in names
             if fresh_venv.HEAVY.match(p.rsplit("-", 1)[0].lower())]
    assert not heavy, f"the hook's environment pulled {heavy}"
    r = try_repo("clean.pt")
    assert r.returncode == 0 and "Passed" in r.stdout, r.stdout + r.stderr
