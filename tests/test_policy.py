"""The global policy of the restricted unpickler (bufinspect/formats/_policy.py): the denylist
covers what picklescan and modelscan flag; a pickle with harmless calls (functools.partial,
collections.Counter, an enum, a stored torch function) is read with exact roles and its calls
reported; a pickle that names a code-execution primitive is refused, however it spells it."""

from __future__ import annotations

import collections
import enum
import functools
import pickle
import pickletools
import zipfile

import pytest

from bufinspect.formats import _policy

# entries of picklescan's list bufinspect reads on purpose (see _policy's docstring): partial
# binds a callable the pickle must name too; `test.*` is any user module called test.py
# (CPython's gadgets are in test.support, which is denied)
_READ_ON_PURPOSE = {"functools.partial", "test.anything"}


def _names(table: dict) -> list[str]:
    """`module.name` for every entry of a scanner's {module: names | "*"} table."""
    out = []
    for module, names in table.items():
        if names == "*":
            out.append(f"{module}.anything")
        elif isinstance(names, str):
            out.append(f"{module}.{names}")
        else:
            out += [f"{module}.{n}" for n in names]
    return out


def test_picklescan_list_is_covered():
    scanner = pytest.importorskip("picklescan.scanner")
    names = _names(scanner._unsafe_globals)
    assert len(names) > 50
    missed = [n for n in names if _policy.denied(n) is None and n not in _READ_ON_PURPOSE]
    assert missed == []


def test_modelscan_list_is_covered():
    settings = pytest.importorskip("modelscan.settings")
    table = {}
    for level in settings.DEFAULT_SETTINGS["unsafe_globals"].values():
        table.update(level)
    names = _names(table)
    assert len(names) > 20
    assert [n for n in names if _policy.denied(n) is None] == []


@pytest.mark.parametrize("name", [
    "os.system", "posix.system", "builtins.eval", "__builtin__.exec", "builtins.getattr",
    "builtins.getattr.__call__",  # protocol 4 walks attributes: the whole name is matched
    "torch.load", "torch.serialization._load", "torch.hub.load", "torch.jit.load",
    "torch.ops.load_library", "torch._C._jit_set_profiling_mode", "torch._C._import_ir_module",
    "torch.storage._load_from_bytes", "torch.fx.graph_module.reduce_graph_module",
    "marshal.loads", "pickle.loads", "ctypes.CDLL", "socket.socket", "importlib.import_module",
    "operator.attrgetter", "types.FunctionType", "subprocess.Popen", "shutil.rmtree",
    "numpy.load", "io.FileIO", "copy_reg.pickle",
])
def test_primitives_are_denied(name):
    rule = _policy.denied(name)
    assert rule is not None and rule.reason


@pytest.mark.parametrize("name", [
    "functools.partial", "collections.Counter", "torch._C._nn.gelu", "torch.nn.functional.relu",
    "torch.nn.modules.linear.Linear", "timm.layers.format.Format", "__main__.MyNet",
    "types.SimpleNamespace", "argparse.Namespace", "numpy.core.multiarray._reconstruct",
    "pathlib.PosixPath", "builtins.set", "transformers.activations.GELUActivation",
    "test_models.Net",  # a user's module called test.py is not CPython's test package
])
def test_ordinary_names_are_read(name):
    assert _policy.denied(name) is None


def test_every_rule_has_a_reason():
    assert len({r.name for r in _policy.RULES}) == len(_policy.RULES)
    assert all(len(r.reason) > 10 for r in _policy.RULES)


# ---- a whole module full of harmless calls ---------------------------------------------------


class Layout(enum.Enum):
    NCHW = "NCHW"
    NHWC = "NHWC"


torch = pytest.importorskip("torch")
nn = torch.nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm_layer = functools.partial(nn.LayerNorm, eps=1e-6)  # torchvision ViT
        self.norm = self.norm_layer(4)
        self.fmt = Layout.NHWC  # timm's Format enum
        self.act = torch.nn.functional.gelu  # transformers keeps torch._C._nn.gelu
        self.milestones = collections.Counter([30, 60, 60])  # MultiStepLR
        self.bn = nn.BatchNorm1d(4)
        self.register_buffer("cache", torch.zeros(4), persistent=False)


def _harmless_module():
    torch.manual_seed(0)
    return nn.Sequential(Block(), nn.Linear(4, 2), Block())


def _reduce_counts(raw: bytes) -> collections.Counter:
    """The callee of every REDUCE, by a stack walk over pickletools' opcode descriptions (a
    model of the pickle machine independent of bufinspect's unpickler)."""
    memo: dict = {}
    stack: list = []
    marks: list[int] = []
    calls: collections.Counter = collections.Counter()
    for op, arg, _ in pickletools.genops(raw):
        if op.name == "REDUCE":
            calls[stack[-2]] += 1
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
            continue
        if op.name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
            continue
        if op.name == "MARK":
            marks.append(len(stack))
            continue
        before = op.stack_before
        if pickletools.markobject in before:  # the items above the mark, then those below it
            del stack[marks.pop():]
            before = before[:before.index(pickletools.markobject)]
        if before:
            del stack[len(stack) - len(before):]
        if op.name == "GLOBAL":
            stack.append(arg.replace(" ", "."))
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        else:
            stack.extend([None] * len(op.stack_after))
    return calls


def test_harmless_calls_are_read_with_exact_roles(tmp_path, cli, cli_json):
    model = _harmless_module()
    path = tmp_path / "block.pt"
    torch.save(model, path)
    with pytest.raises(pickle.UnpicklingError):  # torch itself will not open it safely
        torch.load(path, weights_only=True)

    doc = cli_json("show", path)
    truth = {k: "parameter" for k, _ in model.named_parameters()}
    truth.update({k: "buffer" for k, _ in model.named_buffers()})
    assert {e["key"]: e["role"] for e in doc["entries"]} == truth
    assert {e["key"] for e in doc["entries"] if e["persistent"] is False} == {"0.cache", "2.cache"}
    assert all(e["evidence"] == "module:pickled" for e in doc["entries"])

    calls = {c["name"]: c["count"] for c in doc["calls"]}
    assert calls == {"functools.partial": 2, "collections.Counter": 2,
                     f"{__name__}.Layout": 1}  # one enum member, memoized
    # the same counts as the pickle's own REDUCE opcodes on those globals
    with zipfile.ZipFile(path) as z:
        raw = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    reduced = _reduce_counts(raw)
    for name, count in calls.items():
        assert reduced[name] == count, (name, reduced)
    assert "torch._C._nn.gelu" in doc["foreign_globals"]  # named, not called: not a call

    r = cli("show", path)
    assert r.exit_code == 0
    assert "calls when loaded by torch.load" in " ".join(r.stdout.split()) or \
        "when loaded by torch.load, not run here" in " ".join(r.stdout.split())
    assert "functools.partial \u00d72" in r.stdout

    report = cli_json("check", path)
    found = [f for f in report["findings"] if f["id"] == "pickle-calls"]
    assert len(found) == 1 and found[0]["severity"] == "warning"
    assert "functools.partial x2" in found[0]["message"]
    assert report["ok"] is True  # a warning: exit 0 unless --strict
    assert cli("check", path, "--strict").exit_code == 1


def test_state_dict_has_no_calls(tmp_path, cli_json):
    path = tmp_path / "sd.pt"
    torch.save(_harmless_module().state_dict(), path)
    doc = cli_json("show", path)
    assert "calls" not in doc
    assert not [f for f in cli_json("check", path)["findings"] if f["id"] == "pickle-calls"]


def _proto4_global(module: str, name: str, call: bool) -> bytes:
    """A protocol-4 pickle naming module.name through STACK_GLOBAL (dotted names allowed)."""
    def s(text: str) -> bytes:
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw

    body = s(module) + s(name) + b"\x93"
    if call:
        body += s("x") + b"\x85R"  # ("x",) REDUCE
    return b"\x80\x04" + body + b"."


@pytest.mark.parametrize("module,name", [("builtins", "getattr.__call__"),
                                         ("torch", "hub.load"), ("torch", "_C._jit_pass_inline"),
                                         ("__builtin__", "eval")])
def test_dotted_names_are_judged_whole(tmp_path, cli, module, name):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with zipfile.ZipFile(path) as z:
        members = [(i, z.read(i)) for i in z.infolist()]
    evil = tmp_path / "evil2.pt"
    with zipfile.ZipFile(evil, "w") as z:
        for info, data in members:
            if info.filename.endswith("data.pkl"):
                data = _proto4_global(module, name, call=False)
            z.writestr(info, data)
    r = cli("show", evil)
    assert r.exit_code == 2 and str(evil) in r.stderr and "refusing" in r.stderr, r.stderr
    shown = f"{module}.{name}".replace("__builtin__.", "builtins.")  # (py2 names are mapped)
    assert f"names {shown}, which " in r.stderr  # the global, and why it is refused
    assert len(r.stderr.strip().splitlines()) == 1


def test_harmless_calls_in_a_legacy_file(tmp_path, cli_json):
    path = tmp_path / "legacy.pt"
    torch.save(_harmless_module(), path, _use_new_zipfile_serialization=False)
    doc = cli_json("show", path)
    assert doc["format"] == "torch-legacy"
    assert {c["name"]: c["count"] for c in doc["calls"]} == {
        "functools.partial": 2, "collections.Counter": 2, f"{__name__}.Layout": 1}


def test_schema_describes_the_calls(tmp_path, cli_json):
    jsonschema = pytest.importorskip("jsonschema")
    import json
    from pathlib import Path

    import bufinspect

    schema = json.loads((Path(bufinspect.__file__).parent / "schema" / "bufinspect-1.json")
                        .read_text())
    path = tmp_path / "block.pt"
    torch.save(_harmless_module(), path)
    doc = cli_json("show", path)
    jsonschema.validate(doc, schema)
    bad = dict(doc, calls=[{"name": "functools.partial", "count": 0}])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def _opcode_pickle(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


@pytest.mark.parametrize("body,called", [
    # REDUCE: Counter([1])
    (b"ccollections\nCounter\n]K\x01a\x85R", ["collections.Counter"]),
    # INST: import and call in one opcode
    (b"(K\x01icollections\nCounter\n", ["collections.Counter"]),
    # OBJ: MARK, class, args, OBJ
    (b"(ccollections\nCounter\nK\x01o", ["collections.Counter"]),
    # NEWOBJ then BUILD: an object built without a call (how nn.Module pickles)
    (b"ccollections\nCounter\n)\x81}U\x01aK\x01sb", []),
    # protocol 2's NEWOBJ_EX: copyreg.__newobj_ex__(cls, args, kwargs) builds, never calls
    (b"ccopyreg\n__newobj_ex__\nccollections\nCounter\n)}\x87R", []),
    # a stored partial called later: the call on the instance is recorded too
    (b"cfunctools\npartial\nccollections\nCounter\n\x85R)R",
     ["functools.partial", "functools.partial()"]),
])
def test_every_call_opcode_is_recorded(body, called):
    import io

    from bufinspect.formats import _unpickle

    def no_storage(pid):
        raise pickle.UnpicklingError("no storages here")

    obj, log = _unpickle.load(io.BytesIO(_opcode_pickle(body)), no_storage)
    assert log.calls == called
    assert _unpickle.refusals(log) == []
    assert isinstance(obj, _unpickle.Stub)  # an inert stand-in, never a real Counter
