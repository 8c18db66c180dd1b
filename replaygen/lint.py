"""Find calls in workflow bodies that differ between runs (``replaygen lint``).

A resumed run replays its workflow from the top, so the body must yield the same
commands every time; anything that can differ (the clock, randomness, the
environment, files, the network, the order of a set) belongs in a step. This
module reads each workflow's source with ``ast`` and reports such calls with
the fix. It imports the user's module, to find the workflows and to resolve
names the way Python will, and never calls anything of the user's beyond that
import. It knows nothing about stores or the interpreter.

What runs in the body, and is checked: the workflow's own code, including
lambdas and functions defined in it that are *not* passed to ``Do``, and
functions of the same module that it calls directly (``yield from helper()``
or ``helper()``), transitively. What is a step, and is not checked: the ``fn``
of a ``Do`` (a reference, a lambda, or a function defined in the body).

Codes: RG001 source not readable, RG101 clock, RG102 ``time.sleep``, RG103
random, RG104 new uuid, RG105 environment, RG106 file system, RG107 threads,
RG108 network and processes, RG109 iterating a set, RG110 per-process values
(``hash``, ``id``, pids). A ``# replaygen: deterministic`` comment on the
reported line silences it.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import inspect
import io
import json
import linecache
import os
import re
import sys
import tokenize
import types
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .commands import Command
from .replay import RULES
from .loader import Fallback, LoadError, load

__all__ = ["Finding", "LintError", "Selection", "find_workflows", "lint_module", "lint_workflows",
           "main"]

SILENCE = re.compile(r"#\s*replaygen:\s*deterministic\b", re.IGNORECASE)
"""The comment that silences a finding on its line."""

_COMMANDS = {t.__name__: rule.lint for t, rule in RULES.items()}
"""Every command by class name, with what lint knows of its call (``replay.RULES``)."""
_FnNode = ast.FunctionDef | ast.AsyncFunctionDef


class LintError(LoadError):
    """The module cannot be imported, or holds no workflows to lint (a usage error)."""


@dataclass(frozen=True)
class Finding:
    """One call in a workflow body that can differ between runs.

    ``line`` and ``col`` are 1-based; ``workflow`` is the workflow through which the
    code was reached (the code itself may be in a helper it calls).
    """

    path: str
    line: int
    col: int
    code: str
    message: str
    fix: str
    workflow: str

    def __str__(self) -> str:
        return f"{_shown(self.path)}:{self.line}:{self.col}: {self.code} {self.message} (fix: {self.fix})"


@dataclass(frozen=True)
class Selection:
    """The workflows a ``MODULE[:ATTR]`` argument names, and the rule that picked them."""

    spec: str
    module: str
    rule: str
    workflows: tuple[tuple[str, Callable[..., Any]], ...]


# ---- the rules ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Rule:
    code: str
    does: str                    # follows "`name()` " in the message
    fix: str
    max_args: int | None = None  # flagged only with at most this many arguments: time.ctime(t) is fine


_CLOCK = _Rule("RG101", "reads the clock, which gives another value on replay",
               'read it in a step: `now = yield Do("now", time.time)`')
_SLEEP = _Rule("RG102", "blocks the engine's driver thread (every run waits), and the wait is not "
               "durable", "`yield Sleep(seconds)`: a durable timer that holds no thread")
_RANDOM = _Rule("RG103", "is random, so it differs on replay",
                'draw it in a step: `x = yield Do("draw", random.choice, items)`')
_RANDOM_INSTANCE = dataclasses.replace(_RANDOM, does=(
    "makes random values that differ on replay (even seeded: choice and shuffle may change "
    "between Python versions)"))
_UUID = _Rule("RG104", "makes a new id on every replay",
              'make it in a step: `uid = yield Do("new id", lambda: str(uuid.uuid4()))`')
_ENV = _Rule("RG105", "reads the environment, which can differ in the process that replays the run",
             "pass the value as a workflow argument, or read it in a step")
_FILES = _Rule("RG106", "touches the file system, which can change between replays",
               'move it into a step: `data = yield Do("load", load, path)`')
_THREADS = _Rule("RG107", "uses threads in the workflow body, which runs on the engine's driver thread",
                 "run concurrent work as steps: `yield All(Do(...), Do(...))`")
_NETWORK = _Rule("RG108", "does network or process I/O, again on every replay, and its answer can "
                 "differ", 'move the call into a step: `reply = yield Do("fetch", fetch, url)`')
_SET = _Rule("RG109", "is a set: the order of its str items differs between processes (hash "
             "randomisation), so a replay can yield commands in another order",
             "iterate over `sorted(...)` of it")
_PROCESS = _Rule("RG110", "differs between processes (hash randomisation, addresses, pids)",
                 "derive it from the data (hashlib for a stable hash), or compute it in a step")
_NO_SOURCE = _Rule("RG001", "has no readable source, so it was not linted",
                   "lint the module that defines it, from a checkout with its .py files")

_CALLS: dict[str, _Rule] = {
    **dict.fromkeys([
        "datetime.datetime.now", "datetime.datetime.utcnow", "datetime.datetime.today",
        "datetime.date.today", "time.time", "time.time_ns", "time.monotonic", "time.monotonic_ns",
        "time.perf_counter", "time.perf_counter_ns", "time.process_time", "time.process_time_ns",
        "time.thread_time", "time.thread_time_ns", "time.clock_gettime", "time.clock_gettime_ns"],
        _CLOCK),
    # These read the clock only when not given a time.
    **dict.fromkeys(["time.localtime", "time.gmtime", "time.ctime", "time.asctime"],
                    dataclasses.replace(_CLOCK, max_args=0)),
    "time.strftime": dataclasses.replace(_CLOCK, max_args=1),
    "time.sleep": _SLEEP,
    "os.urandom": _RANDOM, "os.getrandom": _RANDOM,
    "random.Random": _RANDOM_INSTANCE, "random.SystemRandom": _RANDOM,
    "uuid.uuid1": _UUID, "uuid.uuid4": _UUID,
    "os.getenv": _ENV, "os.getenvb": _ENV,
    **dict.fromkeys([
        "builtins.open", "io.open", "os.open", "codecs.open", "os.listdir", "os.scandir", "os.walk",
        "os.stat", "os.path.exists", "os.path.isfile", "os.path.isdir", "os.path.getmtime",
        "os.path.getsize", "glob.glob", "glob.iglob"], _FILES),
    "os.system": _NETWORK, "os.popen": _NETWORK,
    **dict.fromkeys(["builtins.hash", "builtins.id", "os.getpid", "os.getppid"], _PROCESS),
}
# Any call into these modules (or on an instance of their classes).
_PREFIXES: dict[str, _Rule] = {
    **dict.fromkeys(["random", "secrets"], _RANDOM),
    "shutil": _FILES,
    **dict.fromkeys(["threading", "_thread", "multiprocessing", "concurrent.futures"], _THREADS),
    **dict.fromkeys(["requests", "httpx", "urllib.request", "urllib3", "http.client", "aiohttp",
                     "socket", "smtplib", "subprocess", "sqlite3", "psycopg", "psycopg2"], _NETWORK),
}
_ENV_REFS = frozenset({"os.environ", "os.environb", "os._Environ"})
_PATHS = frozenset({"pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath"})
_PATH_IO = frozenset({"read_text", "read_bytes", "write_text", "write_bytes", "open", "exists",
                      "is_file", "is_dir", "stat", "iterdir", "glob", "rglob", "unlink", "mkdir",
                      "touch", "rename", "replace", "rmdir"})
# Wrappers that keep their argument's order: iterating list(s) is iterating s.
_SAME_ORDER = frozenset({"builtins.list", "builtins.tuple", "builtins.iter", "builtins.enumerate",
                         "builtins.zip", "builtins.map", "builtins.filter"})
_SET_TYPES = frozenset({"set", "frozenset", "Set", "FrozenSet", "AbstractSet", "MutableSet"})
_SET_METHODS = frozenset({"union", "intersection", "difference", "symmetric_difference", "copy"})


def _rule_for(name: str, call: ast.Call) -> _Rule | None:
    rule = _CALLS.get(name)
    if rule is None:
        rule = next((r for p, r in _PREFIXES.items() if name == p or name.startswith(p + ".")), None)
    if rule is not None and rule.max_args is not None and len(call.args) + len(call.keywords) > rule.max_args:
        return None
    return rule


# ---- picking the workflows ---------------------------------------------------------------

def find_workflows(spec: str) -> Selection:
    """Import ``MODULE[:ATTR]`` and pick its workflows as ``replaygen worker`` would
    (``replaygen.loader``): ``ATTR`` (default ``workflows``: a list or dict of workflow
    functions, or one) if the module has it; else the functions it registered with
    ``@workflow``; else every generator function defined in the module whose body makes a
    replaygen command. Raises :class:`LintError` when the module cannot be imported or none
    of these finds a workflow.
    """
    try:
        loaded = load(spec, _GUESS)
    except LoadError as exc:
        raise LintError(str(exc)) from None
    if loaded.attr is not None:
        found = _named(loaded.module.__name__, loaded.attr, loaded.found)
    else:
        found = tuple(loaded.found.items())
    return Selection(spec, loaded.module.__name__, loaded.rule, found)


def _guess(module: types.ModuleType) -> dict[str, Callable[..., Any]]:
    """Every generator function defined in ``module`` (not imported into it) that makes a
    replaygen command."""
    sources: dict[str, _Source] = {}
    return {v.__qualname__: v for v in vars(module).values()
            if inspect.isfunction(v) and inspect.isgeneratorfunction(v)
            and v.__module__ == module.__name__ and _makes_commands(v, sources)}


_GUESS = Fallback(
    rule="no `workflows` or @workflow here, so every generator function defined here that "
         "makes replaygen commands",
    missing="defines no generator function that yields replaygen commands", pick=_guess)


def _named(module: str, attr: str, obj: object) -> tuple[tuple[str, Callable[..., Any]], ...]:
    if isinstance(obj, Mapping):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(getattr(v, "__qualname__", repr(v)), v) for v in obj]
    elif inspect.isgeneratorfunction(obj):
        items = [(obj.__qualname__, obj)]
    elif isinstance(obj, types.ModuleType):
        raise LintError(f"{module}:{attr} is a module, not a list or dict of workflows (did you mean "
                        f"`replaygen lint {obj.__name__}`?)")
    else:
        raise LintError(f"{module}:{attr} is a {type(obj).__name__}, not a list or dict of workflows "
                        f"(lint calls nothing, not even a factory: name the workflows instead)")
    for name, fn in items:
        if not callable(fn):
            raise LintError(f"{module}:{attr} holds {fn!r} as {name!r}, which is not a function")
    return tuple(items)


# ---- linting -----------------------------------------------------------------------------

def lint_workflows(
    functions: Iterable[Callable[..., Any]] | Mapping[str, Callable[..., Any]],
) -> list[Finding]:
    """Lint the bodies of these workflow functions (and the same-module helpers they call).

    Returns the findings sorted by file and position, each reported once however many
    workflows reach it. Nothing is called: sources are read and parsed.
    """
    named = (list(functions.items()) if isinstance(functions, Mapping)
             else [(getattr(f, "__qualname__", repr(f)), f) for f in functions])
    sources: dict[str, _Source] = {}
    found: dict[tuple[str, int, int, str], Finding] = {}
    seen: set[object] = set()
    queue: deque[tuple[Callable[..., Any], str, str | None]] = deque(
        (fn, name, None) for name, fn in named)
    while queue:
        fn, workflow, caller = queue.popleft()
        fn = inspect.unwrap(fn)
        code = getattr(fn, "__code__", fn)
        if code in seen:
            continue
        seen.add(code)
        src, node = _locate(fn, sources)
        if src is None or node is None:
            f = Finding(src.path if src else _where(fn), getattr(code, "co_firstlineno", 0) or 1, 1,
                        _NO_SOURCE.code, f"workflow `{workflow}` {_NO_SOURCE.does}", _NO_SOURCE.fix,
                        workflow)
            found.setdefault((f.path, f.line, f.col, f.code), f)
            continue
        where = None if caller is None else f"in `{node.name}`, called by workflow `{workflow}`"
        body = _Body(src, fn, node, workflow, where)
        body.run()
        for f in body.findings:
            found.setdefault((f.path, f.line, f.col, f.code), f)
        queue.extend((helper, workflow, node.name) for helper in body.helpers)
    return sorted(found.values(), key=lambda f: (f.path, f.line, f.col, f.code))


def lint_module(spec: str) -> list[Finding]:
    """Lint the workflows of ``MODULE[:ATTR]`` (see :func:`find_workflows`)."""
    return lint_workflows(dict(find_workflows(spec).workflows))


def _where(fn: object) -> str:
    code = getattr(fn, "__code__", None)
    return code.co_filename if code is not None else getattr(fn, "__module__", None) or repr(fn)


class _Source:
    """One file, parsed once: its tree, module-level imports and silenced lines."""

    def __init__(self, path: str, text: str, package: str | None) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.tree = ast.parse(text, path)
        self.package = package
        self.imports: dict[str, str] = {}
        for node in _scope_nodes(self.tree):
            _add_import(node, package, self.imports)
        self.silenced = _silenced(text)

    def function(self, code: types.CodeType) -> _FnNode | None:
        # A decorated function's code starts at its first decorator.
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == code.co_name:
                starts = [node.lineno, *(d.lineno for d in node.decorator_list)]
                if code.co_firstlineno in starts:
                    return node
        return None


def _locate(fn: Callable[..., Any], cache: dict[str, _Source]) -> tuple[_Source | None, _FnNode | None]:
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType):
        return None, None
    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        path = None
    if path is None:
        return None, None
    if path not in cache:
        globals_ = getattr(fn, "__globals__", {})
        linecache.checkcache(path)
        text = "".join(linecache.getlines(path, globals_))
        if not text:
            return None, None
        package = globals_.get("__package__") or globals_.get("__name__")
        try:
            cache[path] = _Source(path, text, package if isinstance(package, str) else None)
        except SyntaxError:
            return None, None
    src = cache[path]
    return src, src.function(code)


def _silenced(text: str) -> set[int]:
    try:  # comments only: the marker inside a string does not count
        return {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(text).readline)
                if tok.type == tokenize.COMMENT and SILENCE.search(tok.string)}
    except (tokenize.TokenError, SyntaxError):
        return {n for n, line in enumerate(text.splitlines(), 1) if SILENCE.search(line)}


def _makes_commands(fn: Callable[..., Any], sources: dict[str, _Source]) -> bool:
    src, node = _locate(fn, sources)
    if src is None or node is None:
        return False
    body = _Body(src, fn, node, fn.__qualname__, None)
    return any(isinstance(n, ast.Call) and body.command(n.func, body.root) is not None
               for n in _scope_nodes(node))


# ---- scopes and names --------------------------------------------------------------------

def _scope_nodes(root: ast.AST) -> Iterator[ast.AST]:
    """The nodes that run in ``root``'s own scope: not the bodies of functions, lambdas or
    classes defined in it (their decorators, defaults and bases do run here)."""
    if isinstance(root, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
        stack: list[ast.AST] = list(root.body)
    elif isinstance(root, ast.Lambda):
        stack = [root.body]
    else:
        stack = [root]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            extra: list[ast.AST] = [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]
            if not isinstance(node, ast.Lambda):
                extra += node.decorator_list
            stack.extend(extra)
        elif isinstance(node, ast.ClassDef):
            stack.extend([*node.decorator_list, *node.bases, *(k.value for k in node.keywords)])
        else:
            stack.extend(ast.iter_child_nodes(node))


def _add_import(node: ast.AST, package: str | None, into: dict[str, str]) -> None:
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.asname:
                into[a.asname] = a.name
            else:  # `import urllib.request` binds `urllib`
                top = a.name.partition(".")[0]
                into[top] = top
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = (package or "").split(".")
            if not package or node.level - 1 >= len(parts):
                return
            base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
        for a in node.names:
            if a.name != "*":
                into[a.asname or a.name] = f"{base}.{a.name}"


_Assignment = tuple[tuple[int, int], ast.expr | None, ast.expr | None]  # end, value, annotation


class _Scope:
    """Names bound in one function (or lambda, or class) body, and where each is assigned."""

    def __init__(self, node: ast.AST, package: str | None, parent: _Scope | None) -> None:
        self.parent = parent
        self.imports: dict[str, str] = {}
        self.locals: set[str] = set()
        self.assigned: dict[str, list[_Assignment]] = {}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            self.locals.update(x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs,
                                               *([a.vararg] if a.vararg else []),
                                               *([a.kwarg] if a.kwarg else [])])
        declared: set[str] = set()
        for n in _scope_nodes(node):
            _add_import(n, package, self.imports)
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                self.locals.add(n.id)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.locals.add(n.name)
            elif isinstance(n, ast.ExceptHandler) and n.name:
                self.locals.add(n.name)
            elif isinstance(n, (ast.Global, ast.Nonlocal)):
                declared.update(n.names)
            self._record(n)
        self.locals -= declared

    def _record(self, n: ast.AST) -> None:
        def put(target: ast.AST, value: ast.expr | None, annotation: ast.expr | None = None) -> None:
            if isinstance(target, ast.Name):
                # A name is bound once its whole statement is evaluated; a loop variable at once.
                end = ((getattr(n, "end_lineno", 0) or 0, getattr(n, "end_col_offset", 0) or 0)
                       if value is not None else (target.lineno, target.col_offset))
                self.assigned.setdefault(target.id, []).append((end, value, annotation))

        if isinstance(n, ast.Assign):
            for target in n.targets:
                put(target, n.value)
        elif isinstance(n, ast.AnnAssign):
            put(n.target, n.value if n.value is not None else n.annotation, n.annotation)
        elif isinstance(n, ast.NamedExpr):
            put(n.target, n.value)
        elif isinstance(n, (ast.For, ast.AsyncFor, ast.comprehension)):
            for bound in ast.walk(n.target):  # a loop variable: its type is not known here
                put(bound, None)

    def latest(self, name: str, before: tuple[int, int]) -> _Assignment | None:
        """The assignment of ``name`` that ends last before ``before`` (source order)."""
        earlier = [a for a in self.assigned.get(name, []) if a[0] < before]
        return max(earlier, key=lambda a: a[0]) if earlier else None


def _runtime_name(obj: object) -> str | None:
    """The dotted name of a module-level object that no import statement explains
    (``from x import *``, ``now = time.time``, ``rng = random.Random()``)."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        qualname = getattr(obj, "__qualname__", None)
        module = getattr(obj, "__module__", None)
        if isinstance(module, str) and isinstance(qualname, str):
            return f"{module}.{qualname}"
        owner = getattr(obj, "__self__", None)  # builtin methods: datetime.now, random's instance
        if isinstance(qualname, str) and owner is not None:
            owner_module = owner.__module__ if isinstance(owner, type) else type(owner).__module__
            return f"{owner_module}.{qualname}"
        return None
    return f"{type(obj).__module__}.{type(obj).__qualname__}"  # an instance: name it by its class


# ---- one function body -------------------------------------------------------------------

class _Body:
    """Lints one function's body; collects findings and the same-module helpers it calls."""

    def __init__(self, src: _Source, fn: Callable[..., Any], node: _FnNode, workflow: str,
                 where: str | None) -> None:
        self.src, self.fn, self.node, self.workflow, self.where = src, fn, node, workflow, where
        self.globals: dict[str, Any] = getattr(fn, "__globals__", {})
        code = getattr(fn, "__code__", None)
        self.filename = code.co_filename if isinstance(code, types.CodeType) else src.path
        self.root = _Scope(node, src.package, None)
        self.findings: list[Finding] = []
        self.helpers: list[Callable[..., Any]] = []
        self.steps: set[str] = set()          # names of functions passed to Do
        self.step_nodes: set[int] = set()     # ids of nodes that are steps (not linted)

    # -- names

    def qualname(self, expr: ast.AST, scope: _Scope) -> str | None:
        """``expr``'s dotted name through imports (``dt.datetime.now`` -> ``datetime.datetime.now``),
        or None for a local variable or anything not a plain name."""
        if isinstance(expr, ast.Attribute):
            base = self.qualname(expr.value, scope)
            return None if base is None else f"{base}.{expr.attr}"
        if not isinstance(expr, ast.Name):
            return None
        name = expr.id
        s: _Scope | None = scope
        while s is not None:
            if name in s.imports:
                return s.imports[name]
            if name in s.locals:
                return None
            s = s.parent
        if name in self.src.imports:
            return self.src.imports[name]
        if name in self.globals:
            return _runtime_name(self.globals[name])
        return f"builtins.{name}" if hasattr(builtins, name) else None

    def _is_local(self, name: str, scope: _Scope) -> bool:
        s: _Scope | None = scope
        while s is not None:
            if name in s.locals or name in s.imports:
                return True
            s = s.parent
        return False

    def command(self, func: ast.expr, scope: _Scope) -> str | None:
        """Which replaygen command ``func`` makes (``Do``, ``rg.Sleep``, a subclass of one), by
        the name of the replaygen class; None if it makes none."""
        name = self.qualname(func, scope)
        if name is None:
            return None
        parts = name.split(".")
        if parts[0] == "replaygen" and parts[-1] in _COMMANDS:
            return parts[-1]
        obj: Any = sys.modules.get(parts[0])  # a command class reached some other way
        for part in parts[1:]:
            obj = getattr(obj, part, None) if isinstance(obj, (types.ModuleType, type)) else None
        if not (isinstance(obj, type) and issubclass(obj, Command)):
            return None
        return next((c.__name__ for c in obj.__mro__ if c.__name__ in _COMMANDS
                     and c.__module__.startswith("replaygen")), obj.__name__)

    @staticmethod
    def _do_fn(call: ast.Call) -> ast.expr | None:
        if len(call.args) >= 2 and not any(isinstance(a, ast.Starred) for a in call.args[:2]):
            return call.args[1]
        return next((k.value for k in call.keywords if k.arg == "fn"), None)

    # -- walking

    def run(self) -> None:
        # First the steps: what Do is given as fn is not body code, wherever it is defined.
        for n in ast.walk(self.node):
            if isinstance(n, ast.Call) and self._is_do(n, self.root):
                fn = self._do_fn(n)
                if isinstance(fn, ast.Call) and fn.args:  # functools.partial(step, ...)
                    fn = fn.args[0]
                if isinstance(fn, ast.Name):
                    self.steps.add(fn.id)
        for n in ast.walk(self.node):
            if (isinstance(n, ast.Assign) and isinstance(n.value, ast.Lambda)
                    and any(isinstance(t, ast.Name) and t.id in self.steps for t in n.targets)):
                self.step_nodes.add(id(n.value))
        for stmt in self.node.body:
            self.visit(stmt, self.root)

    def _is_do(self, call: ast.Call, scope: _Scope) -> bool:
        """It makes a command whose second argument is a step (``Do``)."""
        made = self.command(call.func, scope)
        return made is not None and _COMMANDS.get(made) == "step"

    def visit(self, node: ast.AST, scope: _Scope) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self._visit_definition(node, scope)
            return
        if isinstance(node, ast.Lambda):
            for d in [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]:
                self.visit(d, scope)
            if id(node) not in self.step_nodes:  # a key= or callback: it runs in the body
                self.visit(node.body, _Scope(node, self.src.package, scope))
            return
        skip: ast.AST | None = None
        if isinstance(node, ast.Call):
            self._check_call(node, scope)
            if self._is_do(node, scope):
                fn = self._do_fn(node)
                # A reference or a lambda is the step itself; a factory call still runs here.
                skip = fn if isinstance(fn, (ast.Name, ast.Attribute, ast.Lambda)) else None
        elif isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Load):
            name = self.qualname(node, scope)
            if name in _ENV_REFS:
                self.report(node, _ENV, f"`{_text(node)}`")
                return
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            self._check_order(node.iter, scope)
        elif isinstance(node, ast.Starred) and isinstance(node.ctx, ast.Load):
            self._check_order(node.value, scope)
        for child in ast.iter_child_nodes(node):
            if child is not skip and not (isinstance(child, ast.keyword) and child.value is skip):
                self.visit(child, scope)

    def _visit_definition(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef,
                          scope: _Scope) -> None:
        outer: list[ast.AST] = [*node.decorator_list]
        if isinstance(node, ast.ClassDef):
            outer += [*node.bases, *(k.value for k in node.keywords)]
        else:
            outer += [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]
        for n in outer:
            self.visit(n, scope)
        if node.name in self.steps:  # passed to Do: a step
            return
        inner = _Scope(node, self.src.package, scope)
        for stmt in node.body:
            self.visit(stmt, inner)

    def _check_call(self, call: ast.Call, scope: _Scope) -> None:
        name = self.qualname(call.func, scope)
        rule = _rule_for(name, call) if name else None
        if rule is None and isinstance(call.func, ast.Attribute) and call.func.attr in _PATH_IO \
                and isinstance(call.func.value, ast.Call) \
                and self.qualname(call.func.value.func, scope) in _PATHS:
            rule = _FILES  # Path("x").read_text()
        if rule is not None:
            written = _text(call.func)
            # Name what an alias stands for (`now()` is time.time), not the obvious.
            alias = name and name.partition(".")[0] not in (written.partition(".")[0], "builtins")
            shown = f"`{written}()`" + (f" ({name})" if alias else "")
            self.report(call, rule, shown)
        if isinstance(call.func, ast.Attribute) and call.func.attr == "join" and len(call.args) == 1:
            self._check_order(call.args[0], scope)  # ", ".join(tags): the text depends on the order
        if isinstance(call.func, ast.Name) and not self._is_local(call.func.id, scope) \
                and call.func.id not in self.src.imports:
            self._follow(self.globals.get(call.func.id))

    def _follow(self, obj: object) -> None:
        """A function of this same file called from the body runs in the body: lint it too."""
        if not callable(obj):
            return
        obj = inspect.unwrap(obj)
        if isinstance(obj, types.FunctionType) and obj is not self.fn \
                and obj.__code__.co_filename == self.filename:
            self.helpers.append(obj)

    def _check_order(self, expr: ast.expr, scope: _Scope) -> None:
        if self._set_ordered(expr, scope, 0):
            self.report(expr, _SET, f"iterating `{_text(expr)}`, which")

    def _set_ordered(self, expr: ast.AST, scope: _Scope, depth: int) -> bool:
        """Whether iterating ``expr`` goes in the order of a set."""
        if depth > 8:
            return False
        deeper = depth + 1
        if isinstance(expr, ast.Set):  # ints hash to themselves: {1, 2} has one order everywhere
            return not all(isinstance(e, ast.Constant) and type(e.value) is int for e in expr.elts)
        if isinstance(expr, ast.SetComp):
            return True
        if isinstance(expr, ast.Call):
            name = self.qualname(expr.func, scope)
            if name in ("builtins.set", "builtins.frozenset"):
                return True
            if name in _SAME_ORDER:
                args = expr.args[1:] if name in ("builtins.map", "builtins.filter") else expr.args
                return any(self._set_ordered(a, scope, deeper) for a in args)
            return (isinstance(expr.func, ast.Attribute) and expr.func.attr in _SET_METHODS
                    and self._set_ordered(expr.func.value, scope, deeper))
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.BitOr, ast.BitAnd, ast.Sub,
                                                                ast.BitXor)):
            return self._set_ordered(expr.left, scope, deeper) or self._set_ordered(
                expr.right, scope, deeper)
        if isinstance(expr, ast.Name):
            s: _Scope | None = scope
            while s is not None and expr.id not in s.locals:
                s = s.parent
            last = s.latest(expr.id, (expr.lineno, expr.col_offset)) if s else None
            if s is None or last is None:
                return False
            _, value, annotation = last
            if annotation is not None and _is_set_annotation(annotation):
                return True
            return value is not None and value is not annotation and self._set_ordered(value, s, deeper)
        return False

    def report(self, node: ast.AST, rule: _Rule, subject: str) -> None:
        line = getattr(node, "lineno", self.node.lineno)
        if line in self.src.silenced:
            return
        text = self.src.lines[line - 1] if 0 < line <= len(self.src.lines) else ""
        # ast columns count UTF-8 bytes; editors count characters, from 1.
        col = len(text.encode()[:getattr(node, "col_offset", 0)].decode(errors="replace")) + 1
        where = f" ({self.where})" if self.where else ""
        self.findings.append(Finding(self.src.path, line, col, rule.code,
                                     f"{subject} {rule.does}{where}", rule.fix, self.workflow))


def _is_set_annotation(node: ast.expr) -> bool:
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute):
        return node.attr in _SET_TYPES
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
        return node.value.partition("[")[0].rpartition(".")[2] in _SET_TYPES
    return isinstance(node, ast.Name) and node.id in _SET_TYPES


def _text(node: ast.AST, limit: int = 40) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _shown(path: str) -> str:
    """A path relative to the current directory when it is under it, as editors like."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return path if rel.startswith(os.pardir) else rel


# ---- the command -------------------------------------------------------------------------

def main(specs: Sequence[str], *, as_json: bool = False, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """``replaygen lint MODULE[:ATTR]...``: print the findings; 1 if any, 0 if none, 2 when a
    module cannot be imported or holds no workflows (one line on ``err``)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        selections = [find_workflows(spec) for spec in specs]
    except LintError as exc:
        print(f"replaygen: error: {exc}", file=err)
        return 2
    workflows = [(name, fn) for s in selections for name, fn in s.workflows]
    findings = lint_workflows(dict(workflows))
    if as_json:
        json.dump({
            "modules": [{"module": s.spec, "picked_by": s.rule,
                         "workflows": [name for name, _ in s.workflows]} for s in selections],
            "findings": [{**dataclasses.asdict(f), "path": _shown(f.path)} for f in findings],
        }, out, indent=2)
        out.write("\n")
    else:
        for s in selections:
            names = ", ".join(name for name, _ in s.workflows)
            print(f"{s.spec}: {names} ({s.rule})", file=out)
        for f in findings:
            print(f, file=out)
        count = f"{len(findings)} finding{'s' * (len(findings) != 1)}" if findings else "no findings"
        print(f"replaygen lint: {count} in {len(workflows)} workflow{'s' * (len(workflows) != 1)}"
              f" from {len(selections)} module{'s' * (len(selections) != 1)}", file=out)
    return 1 if findings else 0
