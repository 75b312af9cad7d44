"""Which globals make bufinspect refuse a pickle: the code-execution primitives, with reasons.

bufinspect never imports or calls anything a pickle names (every foreign global becomes an inert
stub, see `_unpickle`), so this list does not protect bufinspect itself. It decides which files
are reported as attacks (exit 2) instead of being read: a pickle that names one of these would
run code, touch the file system or the network, or reach an arbitrary attribute when a user
later opens it with `torch.load(weights_only=False)`. Every other call (a `functools.partial` of
a layer class, an enum, `collections.Counter`, a torch function kept as an attribute) is an
ordinary part of a pickled module: it is read, and listed as a call `torch.load` would make.

A rule matches a dotted global name (`module.qualname`, as GLOBAL / STACK_GLOBAL name it) when
the name equals the rule or starts with the rule plus a dot; a rule ending in `*` matches any
name with that prefix (`torch._C._jit*`). Protocol 4 names may walk attributes (`builtins` +
`getattr.__call__`): the whole dotted name is matched, so a rule on `builtins.getattr` catches
it.

Compared with the scanners users know (picklescan 1.0.5 `_unsafe_globals`, modelscan 0.8.8
`unsafe_globals`): every entry of theirs is here except two of picklescan's: `functools.partial`,
which torchvision stores in every ViT (`norm_layer=partial(nn.LayerNorm, eps=1e-6)`) — a partial
only binds a callable that the pickle must also name, and that callable is judged by this list;
and the whole `test` package, narrowed to `test.support` (where CPython's gadgets live), since a
user's model defined in a `test.py` pickles as `test.MyNet`.
Beyond theirs this list has importers (`importlib`, `pkgutil`, `zipimport`), code builders
(`types`, `marshal`), torch's loaders and compilers (`torch.load`, `torch.hub`, `torch.jit`,
`torch.ops`, `torch.package`, `torch.fx` graph-module reducers that `exec` generated code,
`torch.storage._load_from_bytes`), more file-system and process modules, and other
serialization loaders (`dill`, `cloudpickle`, `joblib`, `numpy.load`, `pandas.read_pickle`,
`yaml`). `tests/test_policy.py` checks that both scanners' lists are covered.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple


class Rule(NamedTuple):
    name: str  # dotted prefix; `*` at the end: any name with that prefix
    reason: str


_PROCESS = "runs a process or a shell command"
_FILES = "reads, writes or deletes files"
_IMPORT = "imports modules by name"
_EVAL = "compiles or runs Python source or code objects"
_GADGET = "reaches any attribute of any object (a getattr-style gadget)"
_LOADER = "loads another serialized object (pickle inside a pickle)"
_NET = "opens network connections"
_NATIVE = "loads native libraries or calls raw memory"
_INTERP = "changes or inspects the running interpreter"

RULES: tuple[Rule, ...] = (
    # processes and shells
    Rule("os", _PROCESS + " (os.system, os.popen, exec*, spawn*) and " + _FILES),
    Rule("posix", "os on POSIX (os.system pickles as posix.system): " + _PROCESS),
    Rule("nt", "os on Windows (os.system pickles as nt.system): " + _PROCESS),
    Rule("subprocess", _PROCESS),
    Rule("pty", _PROCESS + " (pty.spawn)"),
    Rule("commands", "Python 2's subprocess: " + _PROCESS),
    Rule("popen2", "Python 2's subprocess: " + _PROCESS),
    Rule("platform", _PROCESS + " (platform._syscmd_file, platform.popen)"),
    Rule("uuid", _PROCESS + " (uuid._get_command_stdout)"),
    Rule("_osx_support", _PROCESS + " (_read_output)"),
    Rule("_aix_support", _PROCESS + " (_read_cmd_output)"),
    Rule("_pyrepl", _PROCESS + " (pager helpers)"),
    Rule("imaplib.IMAP4_stream", _PROCESS + " (a shell command as the connection)"),
    Rule("webbrowser", _PROCESS + " (opens a browser)"),
    Rule("multiprocessing", _PROCESS + " (spawns interpreters that run callables)"),
    Rule("concurrent", "runs callables in worker threads or processes"),
    Rule("threading", "runs callables in threads"),
    Rule("_thread", "runs callables in threads"),
    Rule("signal", "installs signal handlers or signals processes"),
    Rule("asyncio", _PROCESS + " (create_subprocess_shell) and " + _NET),
    Rule("pip", "installs packages (runs their setup code)"),
    Rule("ensurepip", "installs packages (_run_pip)"),
    Rule("venv", "creates environments and runs pip"),
    Rule("distutils", _FILES + " and " + _PROCESS),
    Rule("setuptools", "runs build commands"),
    Rule("torch.utils.collect_env", _PROCESS + " (collect_env.run)"),
    Rule("torch.utils.bottleneck", _EVAL + " (runs a script under cProfile)"),
    Rule("torch.utils.cpp_extension", "compiles and loads C++ code"),
    Rule("torch._inductor", "compiles and loads generated code (codecache.compile_file runs a "
                            "compiler command)"),
    Rule("torch.multiprocessing", _PROCESS),
    Rule("torch.distributed.run", _PROCESS + " (the torchrun launcher)"),
    Rule("torch.distributed.launch", _PROCESS + " (the old launcher)"),
    Rule("torch.distributed.elastic", _PROCESS + " (agents and launchers)"),
    Rule("torch.distributed.launcher", _PROCESS),
    Rule("torch.distributed.rpc", "runs remote calls: " + _NET),
    # the file system
    Rule("shutil", _FILES + " (copy, move, rmtree)"),
    Rule("tempfile", _FILES + " (creates files and directories)"),
    Rule("io", _FILES + " (io.open, io.FileIO, io.open_code)"),
    Rule("_io", _FILES + " (_io.FileIO, _io.open: how io.FileIO pickles)"),
    Rule("builtins.open", _FILES),
    Rule("fileinput", _FILES),
    Rule("linecache", _FILES + " (reads any file)"),
    Rule("glob", "lists the file system"),
    Rule("shelve", _FILES + " and " + _LOADER),
    Rule("dbm", _FILES),
    Rule("sqlite3", _FILES + " (opens databases, runs SQL)"),
    Rule("mmap", _FILES + " (maps files into memory)"),
    Rule("logging.FileHandler", _FILES + " (creates a log file)"),
    Rule("logging.handlers", _FILES + " and " + _NET),
    Rule("zipfile", _FILES),
    Rule("tarfile", _FILES + " (extraction writes anywhere)"),
    Rule("torch.save", _FILES + " (writes a file)"),
    Rule("torch.from_file", _FILES + " (maps a file as a tensor)"),
    Rule("numpy.fromfile", _FILES),
    Rule("numpy.memmap", _FILES),
    Rule("numpy.loadtxt", _FILES),
    Rule("numpy.genfromtxt", _FILES),
    Rule("numpy.save", _FILES + " (writes a file)"),
    Rule("numpy.savez", _FILES + " (writes a file)"),
    Rule("numpy.savetxt", _FILES + " (writes a file)"),
    Rule("numpy.tofile", _FILES),
    # importers
    Rule("builtins.__import__", _IMPORT),
    Rule("importlib", _IMPORT + " and runs their code"),
    Rule("imp", "Python 2/3 importer: " + _IMPORT),
    Rule("pkgutil", _IMPORT + " (pkgutil.resolve_name reaches any module attribute)"),
    Rule("zipimport", _IMPORT + " from zip files"),
    Rule("pydoc", _IMPORT + " (pydoc.locate) and " + _PROCESS + " (pipepager)"),
    Rule("runpy", _EVAL + " (runs modules and scripts)"),
    Rule("site", "runs .pth files and changes sys.path"),
    Rule("sys", _INTERP + " (sys.modules, sys.settrace, sys.exit)"),
    Rule("gc", _INTERP + " (gc.get_objects reaches every live object)"),
    Rule("inspect", _INTERP + " (frames, sources from files)"),
    Rule("ctypes", _NATIVE),
    Rule("_ctypes", _NATIVE),
    Rule("cffi", _NATIVE),
    Rule("numpy.ctypeslib", _NATIVE + " (load_library)"),
    Rule("torch.ops", _NATIVE + " (torch.ops.load_library) and custom operators"),
    Rule("torch._ops", _NATIVE + " (torch.ops.load_library) and custom operators"),
    Rule("torch.classes", _NATIVE + " (torch.classes.load_library) and custom C++ classes"),
    Rule("torch.library", "registers and loads operators and their kernels"),
    # evaluators and code builders
    Rule("builtins.eval", _EVAL),
    Rule("builtins.exec", _EVAL),
    Rule("builtins.execfile", _EVAL + " (Python 2)"),
    Rule("builtins.compile", _EVAL),
    Rule("builtins.breakpoint", "starts a debugger that runs typed code"),
    Rule("builtins.input", "reads the terminal (and evaluates it in Python 2)"),
    Rule("builtins.help", _PROCESS + " (a pager)"),
    Rule("builtins.exit", "ends the process"),
    Rule("builtins.quit", "ends the process"),
    Rule("builtins.globals", _INTERP),
    Rule("builtins.locals", _INTERP),
    Rule("builtins.vars", _GADGET),
    Rule("builtins.apply", "calls any callable (Python 2)"),
    Rule("builtins.reload", _IMPORT + " (Python 2)"),
    Rule("types.CodeType", _EVAL + " (builds code objects from bytes)"),
    Rule("types.FunctionType", _EVAL + " (builds functions from code objects)"),
    Rule("types.LambdaType", _EVAL + " (FunctionType under another name)"),
    Rule("types.ModuleType", _IMPORT + " (builds modules)"),
    Rule("types.new_class", "builds classes whose namespace callback runs"),
    Rule("code", _EVAL + " (InteractiveInterpreter.runcode)"),
    Rule("codeop", _EVAL),
    Rule("timeit", _EVAL + " (timeit.timeit runs a source string)"),
    Rule("profile", _EVAL + " (profile.run)"),
    Rule("cProfile", _EVAL + " (cProfile.run)"),
    Rule("trace", _EVAL + " (Trace.run)"),
    Rule("pdb", "starts a debugger that runs typed code"),
    Rule("bdb", "starts a debugger that runs code"),
    Rule("doctest", _EVAL + " (runs docstring examples)"),
    Rule("idlelib", _EVAL + " (runcode helpers)"),
    Rule("lib2to3", _EVAL + " (Grammar.loads unpickles, make_label evaluates)"),
    Rule("test.support", "CPython's test support spawns interpreters that run source"),
    Rule("numpy.f2py", _EVAL + " (eval of expressions)"),
    Rule("numpy.testing", _EVAL + " (runstring is exec)"),
    Rule("numpy.distutils", _PROCESS),
    Rule("IPython", _EVAL + " (run_cell) and " + _PROCESS),
    Rule("sympy.sympify", _EVAL + " (sympify evaluates strings)"),
    Rule("sympy.parsing", _EVAL + " (parse_expr evaluates strings)"),
    Rule("torch.jit", "compiles and loads TorchScript (torch.jit.load, script, "
                      "unsupported_tensor_ops.execWrapper is exec)"),
    Rule("torch._C._jit*", "TorchScript compiler and runtime entry points"),
    Rule("torch._C._import_ir_module*", "loads a TorchScript module"),
    Rule("torch._C._load*", "loads TorchScript / mobile modules from files or bytes"),
    Rule("torch._C._backport*", _FILES + " (rewrites mobile models)"),
    Rule("torch._C._dynamo", "installs Python frame evaluation hooks"),
    Rule("torch._dynamo", _EVAL + " (guards are compiled Python)"),
    Rule("torch.compile", "compiles and runs generated code"),
    Rule("torch.fx.graph_module.reduce_graph_module",
         _EVAL + " (exec of the pickled GraphModule's Python source)"),
    Rule("torch.fx.graph_module.reduce_package_graph_module", _EVAL + " (via torch.package)"),
    Rule("torch.fx.graph_module.reduce_deploy_graph_module", _EVAL),
    Rule("torch.fx.graph_module._deserialize_graph_module", _EVAL),
    Rule("torch.fx.graph_module._exec_with_source", _EVAL),
    Rule("torch.fx.experimental.symbolic_shapes.ShapeEnv.evaluate_guards_expression", _EVAL),
    Rule("torch.package", _IMPORT + " and runs code from packages"),
    Rule("torch.utils._config_module", _LOADER + " (ConfigModule.load_config)"),
    Rule("torch.utils.data.datapipes.utils.decoder", _LOADER + " (basichandlers unpickle)"),
    Rule("torch._export.serde", _LOADER),
    Rule("torch.export.load", _LOADER + " (falls back to torch.load(weights_only=False))"),
    # getattr-style gadgets
    Rule("builtins.getattr", _GADGET),
    Rule("builtins.setattr", "sets any attribute of any object (replaces functions)"),
    Rule("builtins.delattr", "deletes attributes of any object"),
    Rule("operator", _GADGET + " (attrgetter, methodcaller, itemgetter, call)"),
    Rule("_operator", _GADGET + " (how operator pickles)"),
    Rule("copyreg", "registers reducers for every later pickle (copyreg._reconstructor, "
                    "__newobj__ and __newobj_ex__ are read, as plain object construction)"),
    Rule("copy_reg", "Python 2's copyreg"),
    Rule("torch._dynamo.guards.GuardBuilder.get", _GADGET),
    # serialization loaders
    Rule("torch.load", _LOADER),
    Rule("torch.serialization", _LOADER + " (load, _load, _legacy_load)"),
    Rule("torch.storage._load_from_bytes", _LOADER + " (it calls torch.load)"),
    Rule("torch._weights_only_unpickler", _LOADER),
    Rule("torch.hub", "downloads and runs code (hubconf.py) and files"),
    Rule("pickle", _LOADER),
    Rule("_pickle", _LOADER),
    Rule("pickletools", _LOADER),
    Rule("marshal", _LOADER + " (marshal.loads builds code objects)"),
    Rule("dill", _LOADER + " and builds functions from code"),
    Rule("cloudpickle", _LOADER + " and builds functions from code (_make_function)"),
    Rule("joblib", _LOADER),
    Rule("numpy.load", _LOADER + " (allow_pickle)"),
    Rule("numpy.lib.npyio", _LOADER + " (numpy.load)"),
    Rule("numpy.lib._npyio_impl", _LOADER + " (numpy.load)"),
    Rule("pandas.read_pickle", _LOADER),
    Rule("pandas.io.pickle", _LOADER),
    Rule("yaml", _LOADER + " (yaml.load / unsafe_load build any Python object)"),
    Rule("jsonpickle", _LOADER),
    # the network
    Rule("socket", _NET),
    Rule("_socket", _NET),
    Rule("ssl", _NET + " (get_server_certificate leaks through DNS)"),
    Rule("http", _NET),
    Rule("httplib", _NET + " (Python 2)"),
    Rule("urllib", _NET + " (urlopen) and " + _FILES + " (urlretrieve)"),
    Rule("urllib2", _NET + " (Python 2)"),
    Rule("ftplib", _NET),
    Rule("smtplib", _NET),
    Rule("telnetlib", _NET),
    Rule("xmlrpc", _NET),
    Rule("requests", _NET),
    Rule("aiohttp", _NET),
    Rule("httpx", _NET),
    Rule("huggingface_hub.hf_hub_download", _NET + " (downloads files)"),
    Rule("huggingface_hub.snapshot_download", _NET + " (downloads repositories)"),
    Rule("huggingface_hub.file_download", _NET + " (downloads files)"),
)

_EXACT = {r.name: r for r in RULES if not r.name.endswith("*")}
_PREFIX = tuple(r for r in RULES if r.name.endswith("*"))
_PY2 = {"__builtin__": "builtins", "copy_reg": "copyreg", "exceptions": "builtins"}


@lru_cache(maxsize=4096)
def denied(full: str) -> Rule | None:
    """The rule a dotted global name breaks, or None when naming it is harmless."""
    module, _, rest = full.partition(".")
    full = _PY2.get(module, module) + ("." + rest if rest else "")
    parts = full.split(".")
    for n in range(1, len(parts) + 1):
        rule = _EXACT.get(".".join(parts[:n]))
        if rule is not None:
            return rule
    for rule in _PREFIX:
        if full.startswith(rule.name[:-1]):
            return rule
    return None
