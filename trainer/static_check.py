"""Static check of a candidate train.py before anything runs: imports outside an allow-list, file, process,
interpreter and introspection tricks, and changes to imported modules, each reported as "line N: ...".

A first filter, not the wall: what reading the AST cannot see is stopped at run time by judge/guard.py."""
from __future__ import annotations

import ast

from judge.source_tree import parsed

ALLOWED_MODULES = ("torch", "math", "time", "os", "dataclasses", "functools", "itertools", "collections",
                   "typing", "numpy", "__future__", "enum", "abc", "contextlib",
                   "prepare")          # popsearch's own prepare for adopted scripts (trainer/adopted.py)
# Upstream scripts tune the collector for speed (gc.collect/freeze/disable): only these attributes of gc, and gc
# itself only as `gc.<one of them>` (no alias, no argument), so its object walkers stay out of reach.
GC_ALLOWED = frozenset({"collect", "disable", "enable", "freeze", "isenabled"})
# The FA3 route of upstream scripts: exactly `from kernels import get_kernel`. In the sandbox the network is closed
# and where kernels are found is pinned (judge.spec.KERNEL_ENV), so it loads only kernels the operator cached.
KERNELS_ALLOWED = ("kernels", "get_kernel")
ALLOWED_FIXED = ("judge.loader", "judge.handoff", "trainer.harness", "trainer.attention", "trainer.flops")
BANNED_TORCH = ("torch.distributed", "torch.hub", "torch.multiprocessing", "torch.utils.cpp_extension",
                "torch.utils.data", "torch._C", "torch.ops", "torch.package", "torch.jit")
OS_ALLOWED = frozenset({"environ", "getenv", "path", "cpu_count", "getpid", "sep", "linesep", "name"})
# Settings a train script may legitimately assign on torch (everything else on a module is a patch).
CONFIG_PREFIXES = ("torch.backends.", "torch._inductor.config.", "torch._dynamo.config.",
                   "torch._functorch.config.", "os.environ")
BANNED_NAMES = frozenset({"open", "exec", "eval", "compile", "__import__", "globals", "locals", "vars",
                          "breakpoint", "input", "__builtins__", "__loader__", "__spec__", "delattr"})
DYNAMIC_ATTR_CALLS = frozenset({"getattr", "setattr"})
# Attribute names that reach the interpreter, other modules, files, processes or native code.
BANNED_ATTRS = frozenset({
    "__builtins__", "__import__", "__globals__", "__code__", "__closure__", "__subclasses__", "__bases__",
    "__base__", "__mro__", "__dict__", "__getattribute__", "__setattr__", "__delattr__", "__loader__",
    "__spec__", "__file__", "__self__", "__func__", "__reduce__", "__reduce_ex__", "__init_subclass__",
    "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "tb_frame", "tb_next", "gi_frame",
    "gi_code", "cr_frame", "ag_frame", "_getframe", "currentframe", "get_objects", "get_referrers",
    "get_referents", "settrace", "setprofile", "addaudithook",
    "sys", "os", "subprocess", "ctypes", "gc", "inspect", "socket", "signal", "shutil", "importlib",
    "builtins", "runpy", "pickle", "marshal", "threading", "multiprocessing", "pathlib", "tempfile",
    "io", "resource", "mmap", "_thread", "_posixsubprocess", "posix",
    "_C", "from_file", "fromfile", "memmap", "tofile", "load_library", "load_inline", "cpp_extension",
    "hub", "distributed", "system", "popen", "fork", "spawnv", "execv", "kill", "killpg", "_exit",
    "dlopen", "CDLL", "cdll", "pydll", "reload", "import_module", "exec_module", "setrlimit"})
FILE_READERS = frozenset({"load", "loadtxt", "genfromtxt", "fromregex", "read_text", "read_bytes"})
PATCH_HELPERS = frozenset({"setattr", "delattr"})


def check_source(source: str) -> list[str]:
    """Problems found in the source, each "line N: what"; [] when it passes."""
    try:
        tree = parsed(source)
    except SyntaxError as exc:
        return [f"line {exc.lineno or 0}: syntax error: {exc.msg}"]
    modules, imported = _bound_names(tree)
    visitor = _Checker(modules, imported)
    visitor.visit(tree)
    return [f"line {line}: {what}" for line, what in sorted(set(visitor.problems))]


def _bound_names(tree: ast.AST) -> tuple[dict, set]:
    """modules: local name -> dotted module path (import aliases and names bound to module attribute
    chains); imported: names bound by `from X import name` (functions and classes of fixed modules)."""
    modules, imported, assigns = {}, set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            assigns.append(node)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    modules[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    modules[root] = root
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                local = alias.asname or alias.name
                imported.add(local)
                modules[local] = f"{node.module}.{alias.name}"
    changed = True
    while changed:                      # F = torch.nn.functional ; G = F  (aliases of modules)
        changed = False
        for node in assigns:
            path = _dotted(node.value, modules)
            name = node.targets[0].id
            if path and name not in modules:
                modules[name] = path
                changed = True
    return modules, imported


def _dotted(node: ast.AST, modules: dict) -> str | None:
    """'torch.nn.functional.cross_entropy' for an attribute chain rooted at a module name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in modules:
        return ".".join([modules[node.id], *reversed(parts)])
    return None


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


class _Checker(ast.NodeVisitor):
    def __init__(self, modules: dict, imported: set):
        self.modules, self.imported = modules, imported
        self.problems: list[tuple[int, str]] = []
        self._attribute_bases: set[int] = set()      # ids of Name nodes that are the base of an attribute

    def report(self, node: ast.AST, what: str) -> None:
        self.problems.append((getattr(node, "lineno", 0), what))

    # -- imports
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module(node, alias.name)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.report(node, "uses a relative import (a candidate is one file)")
            return
        module = node.module or ""
        if module != KERNELS_ALLOWED[0]:
            self._check_module(node, module)
        for alias in node.names:
            if alias.name == "*":
                self.report(node, f"imports * from {module}")
            elif module == "os" and alias.name not in OS_ALLOWED:
                self.report(node, f"imports os.{alias.name}")
            elif module == KERNELS_ALLOWED[0] and alias.name != KERNELS_ALLOWED[1]:
                self.report(node, f"imports {alias.name} from kernels (only `from kernels import get_kernel`)")
            elif module == "gc" and alias.name not in GC_ALLOWED:
                self.report(node, f"imports gc.{alias.name} (of gc only {', '.join(sorted(GC_ALLOWED))})")
            elif alias.name in BANNED_ATTRS or alias.name in FILE_READERS:
                self.report(node, f"imports {alias.name} from {module}")
            elif module == "torch" and f"torch.{alias.name}" in BANNED_TORCH:
                self.report(node, f"imports torch.{alias.name}")
        self.generic_visit(node)

    def _check_module(self, node: ast.AST, module: str) -> None:
        root = module.split(".")[0]
        if module == "gc":
            return                       # its uses are checked one by one (GC_ALLOWED)
        if root in ("judge", "trainer"):
            if module not in ALLOWED_FIXED:
                self.report(node, f"imports {module} (only {', '.join(ALLOWED_FIXED)} are open to a candidate)")
        elif root not in ALLOWED_MODULES:
            self.report(node, f"imports {module}")
        elif any(module == b or module.startswith(b + ".") for b in BANNED_TORCH):
            self.report(node, f"imports {module}")

    # -- names, attributes, calls
    def visit_Name(self, node: ast.Name) -> None:
        if node.id in BANNED_NAMES:
            self.report(node, f"uses {node.id}")
        elif self.modules.get(node.id) == "gc" and id(node) not in self._attribute_bases:
            self.report(node, f"uses the gc module itself (only gc.{'/'.join(sorted(GC_ALLOWED))})")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        path = _dotted(node, self.modules)
        if isinstance(node.value, ast.Name):
            self._attribute_bases.add(id(node.value))
        if path and path.startswith("kernels."):
            self.report(node, f"uses {path} (get_kernel may only be called)")
        elif path and path.startswith("gc.") and path.split(".")[1] not in GC_ALLOWED:
            self.report(node, f"uses {'.'.join(path.split('.')[:2])} (of gc only {', '.join(sorted(GC_ALLOWED))})")
        elif node.attr in BANNED_ATTRS:
            self.report(node, f"uses .{node.attr}")
        elif path and path.startswith("os.") and path.split(".")[1] not in OS_ALLOWED:
            self.report(node, f"uses {path}")
        elif path and any(path == b or path.startswith(b + ".") for b in BANNED_TORCH):
            self.report(node, f"uses {path}")
        elif path and node.attr in FILE_READERS:
            self.report(node, f"reads files with {path}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in DYNAMIC_ATTR_CALLS | PATCH_HELPERS:
            self._check_attr_call(node, func.id)
        self.generic_visit(node)

    def _check_attr_call(self, node: ast.Call, name: str) -> None:
        args = node.args
        if len(args) < 2 or not (isinstance(args[1], ast.Constant) and isinstance(args[1].value, str)):
            self.report(node, f"calls {name} with a computed attribute name")
            return
        attr = args[1].value
        if attr in BANNED_ATTRS or attr.startswith("__"):
            self.report(node, f"calls {name}(..., {attr!r})")
        if name in PATCH_HELPERS and self._is_foreign(args[0]):
            self.report(node, f"calls {name} on {ast.unparse(args[0])} (changes an imported module or helper)")

    # -- assignments onto imported things
    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._check_target(target)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._check_target(target, "deletes")
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            if item.optional_vars is not None:
                self._check_target(item.optional_vars)
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        for name in node.names:
            if name in self.modules:
                self.report(node, f"rebinds the imported name {name} through `global`")
        self.generic_visit(node)

    def _check_target(self, target: ast.AST, verb: str = "assigns to") -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._check_target(element, verb)
        elif isinstance(target, ast.Starred):
            self._check_target(target.value, verb)
        elif isinstance(target, (ast.Attribute, ast.Subscript)) and self._is_foreign(target):
            shown = ast.unparse(target)
            path = _dotted(target.value if isinstance(target, ast.Subscript) else target, self.modules) or ""
            if not any(path.startswith(p) or path == p.rstrip(".") for p in CONFIG_PREFIXES):
                self.report(target, f"{verb} {shown} (changes an imported module or helper)")

    def _is_foreign(self, node: ast.AST) -> bool:
        """Rooted at an imported module or name, or at type(...) of something (a class not of its own)."""
        while isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "type":
            return True
        return isinstance(node, ast.Name) and node.id in self.modules
