"""In-process guard against untrusted code: an audit hook that refuses, names and records what a candidate
may not do (files, processes, network, native code, frames, shadowing); Landlock is in judge/landlock.py.

Audit hooks cannot be removed once installed and Landlock cannot be lifted. The trial bootstrap
(trainer/sandbox.py) applies Landlock before importing torch (every later thread inherits it) and installs
the hook after the fixed helpers are imported, just before the candidate's code runs."""
from __future__ import annotations

import glob
import os
import pathlib
import site
import stat
import sys
import types
import _thread

from judge.spec import KERNEL_ENV


VIOLATION_PREFIX = "POPSEARCH-VIOLATION: "
VIOLATION_EXIT = 86                  # exit status of a trial process that broke the rules
MAX_RECORDED = 200                   # violation lines written to the record (the count goes on)

# Programs a trial may start when subprocesses are allowed (compilers that torch.compile/triton run).
COMPILER_PROGRAMS = ("gcc", "g++", "cc", "c++", "clang", "clang++", "ld", "as", "ldconfig",
                     "ldconfig.real", "ptxas", "nvcc", "nvdisasm", "cuobjdump", "fatbinary", "nvlink", "file",
                     "nvidia-smi")
# Native libraries torch and triton load through ctypes at run time (NVML for device counts, the driver).
GPU_LIBRARIES = ("libcuda.", "libnvidia-ml.", "libnvrtc", "libcudart", "libnvJitLink", "libcublas",
                 "libcudnn", "libnccl", "libcupti", "libcusparse", "libcufft", "libcurand", "libcusolver",
                 "libnvToolsExt")
# System folders a Python process with torch reads (shared libraries, /proc/self, CPU and GPU facts).
SYSTEM_READ_ROOTS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/proc", "/sys",
                     "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/nsswitch.conf",
                     "/etc/passwd", "/etc/group", "/etc/localtime", "/etc/os-release", "/etc/alternatives")
# Device files a trial opens (reads and writes); GPUs add /dev/nvidia* at lock-down time.
DEVICE_FILES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom", "/dev/random")
DEVICE_GLOBS = ("/dev/nvidia*", "/dev/nvidia-caps/*", "/dev/dri/*")
CODE_SUFFIXES = (".py", ".pyc", ".so", ".pth", ".pyd")
FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "gi_code", "__code__",
                         "__globals__", "__closure__", "f_back", "f_globals", "f_locals", "f_builtins"})
PROCESS_EVENTS = ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                  "os.forkpty", "os.system", "os.startfile", "pty.spawn")
NETWORK_EVENTS = ("socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                  "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
                  "socket.gethostbyname_ex", "socket.getnameinfo", "socket.sethostname")
# Events that candidate code may not raise itself (a library may: tracebacks read tb_frame).
DIRECT_EVENTS = ("sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile",
                 "gc.get_objects", "gc.get_referrers", "gc.get_referents", "compile",
                 "code.__new__", "function.__new__", "fcntl.ioctl", "sys._getframemodulename",
                 "sys.addaudithook")
WRITE_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
                "os.utime": (0,), "os.chflags": (0,), "os.lchflags": (0,), "os.setxattr": (0,),
                "os.removexattr": (0,), "os.symlink": (1,), "os.link": (0, 1),
                "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copymode": (1,),
                "shutil.copystat": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1),
                "shutil.chown": (0,), "shutil.unpack_archive": (1,), "os.truncate": (0,)}
ALWAYS_DENIED = ("resource.setrlimit", "resource.prlimit", "builtins.input",
                 "builtins.breakpoint", "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.dlopen")
# ctypes use that libraries may make (torch calls NVML) but the candidate's own code may not.
CTYPES_EVENTS = ("ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata", "ctypes.call_function",
                 "ctypes.string_at", "ctypes.wstring_at", "ctypes.PyObj_FromPtr", "ctypes.addressof",
                 "ctypes.cdata/buffer", "ctypes.create_string_buffer", "ctypes.create_unicode_buffer",
                 "ctypes.get_errno", "ctypes.set_errno", "ctypes.seh_exception", "ctypes.get_last_error",
                 "ctypes.set_last_error")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def python_roots() -> tuple[str, ...]:
    """Folders that hold this interpreter, its standard library and installed packages."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots.update(site.getsitepackages())
    user_site = site.getusersitepackages()
    if os.path.isdir(user_site):
        roots.add(user_site)
    roots.update(p for p in sys.path if p and os.path.isdir(p))
    return tuple(sorted(os.path.realpath(r) for r in roots))


def module_roots(names) -> tuple[str, ...]:
    """The package folders of already imported modules (editable installs live outside site-packages)."""
    roots = set()
    for name in names:
        module = sys.modules.get(name)
        paths = getattr(module, "__path__", None) or []
        if not paths and getattr(module, "__file__", None):
            paths = [os.path.dirname(module.__file__)]
        roots.update(os.path.realpath(p) for p in paths)
    return tuple(sorted(roots))


def program_roots(programs=COMPILER_PROGRAMS) -> tuple[str, ...]:
    """Install folders of the programs a trial may start (e.g. /opt/gcc for /opt/gcc/bin/gcc)."""
    roots = set()
    for name in programs:
        found = _which(name)
        if found:
            prefix = os.path.dirname(os.path.dirname(found))
            roots.add(prefix if prefix.count("/") >= 2 else os.path.dirname(found))
    return tuple(sorted(roots))


def device_files() -> tuple[str, ...]:
    found = [p for p in DEVICE_FILES if os.path.exists(p)]
    for pattern in DEVICE_GLOBS:
        found.extend(p for p in glob.glob(pattern) if not os.path.isdir(p))
    return tuple(found)


def _under(path: str, roots) -> bool:
    for root in roots:
        if path == root or path.startswith(root if root.endswith("/") else root + "/"):
            return True
    return False


def _make_resolver():
    """realpath built on functions captured now, so that patching os/posixpath later changes nothing."""
    lstat, readlink, getcwd, is_link, fspath = os.lstat, os.readlink, os.getcwd, stat.S_ISLNK, os.fspath
    str_type, bytes_type, decode = str, bytes, bytes.decode
    path_types = (pathlib.PosixPath, pathlib.PurePosixPath, os.DirEntry)

    def resolve(path) -> str:
        if type(path) in path_types:
            path = fspath(path)
        if type(path) is bytes_type:
            path = decode(path, "utf-8", "surrogateescape")
        elif type(path) is not str_type:
            raise PermissionError(f"a path of type {type(path).__name__} (only str, bytes and pathlib paths)")
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        pending, done, links = list(reversed(path.split("/"))), "", 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                done = done.rsplit("/", 1)[0]
                continue
            step = done + "/" + part
            try:
                mode = lstat(step).st_mode
            except OSError:
                done = step
                continue
            if is_link(mode):
                links += 1
                if links > 40:
                    raise PermissionError(f"{path}: too many symbolic links")
                target = readlink(step)
                done = "" if target.startswith("/") else done
                pending.extend(reversed(target.split("/")))
                continue
            done = step
        return done or "/"
    return resolve


def _module_files(names) -> list[str]:
    files = []
    for name in names:
        path = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(path, str):
            files.append(os.path.realpath(path))
    return files


def _make_recorder(fd: int | None):
    """record(message): append to the in-process list, write one line to stderr and to the append-only
    record file (fd, opened by the bootstrap); a record file that was closed or swapped ends the process."""
    violations: list[str] = []
    write, fstat, exit_now, encode = os.write, os.fstat, os._exit, str.encode
    identity = None
    if fd is not None:
        st = fstat(fd)
        identity = (st.st_dev, st.st_ino)

    def record(message: str) -> None:
        repeated = message in violations
        violations.append(message)
        if repeated or len(violations) > MAX_RECORDED:
            return
        line = encode(VIOLATION_PREFIX + message + "\n", "utf-8", "replace")
        try:
            write(2, line)
        except OSError:
            pass
        if fd is None:
            return
        try:
            st = fstat(fd)
            if (st.st_dev, st.st_ino) != identity:
                raise OSError("the violations record was swapped")
            write(fd, line)
        except OSError:
            exit_now(VIOLATION_EXIT)
    return record, violations


def lock_down(deny_read=(), allow_read=None, allow_write=(), allow_subprocess=False, allow_network=False, *,
              protect=(), candidate_files=(), no_code_roots=(), code_ok_roots=(), watch_modules=(),
              programs=COMPILER_PROGRAMS, violations_fd=None, checkpoint=None) -> list[str]:
    """Install the audit hook; return the in-process list of violations (every refused act).

    deny_read/allow_read/allow_write: paths (resolved here); protect: files inside allow_write that may
    not be written, renamed or removed (the violations record, the runner's log). candidate_files: the untrusted
    scripts (events raised directly from their code are judged stricter). no_code_roots: writable folders
    in which no Python code may be written or run (except under code_ok_roots, the compile cache).
    watch_modules: module names that must never be imported again (shadowing). checkpoint: (paths, fn):
    fn() -> list of problems, run when one of paths is opened for writing or renamed onto."""
    real = os.path.realpath
    policy = dict(
        deny_read=tuple(real(p) for p in deny_read),
        allow_read=None if allow_read is None else tuple(real(p) for p in allow_read),
        allow_write=tuple(real(p) for p in allow_write),
        protect=frozenset(real(p) for p in protect),
        candidates=frozenset(real(p) for p in candidate_files),
        no_code=tuple(real(p) for p in no_code_roots),
        code_ok=tuple(real(p) for p in code_ok_roots),
        watch=frozenset(watch_modules),
        watch_files=frozenset(_module_files(watch_modules)),
        programs=frozenset(programs),
        subprocess=bool(allow_subprocess),
        network=bool(allow_network),
        pid=os.getpid(),
        checkpoint_paths=frozenset(real(p) for p in (checkpoint[0] if checkpoint else ())),
        checkpoint_fn=checkpoint[1] if checkpoint else None,
    )
    record, violations = _make_recorder(violations_fd)
    sys.addaudithook(_make_hook(policy, record, _make_resolver(), violations_fd))
    return violations


def _make_hook(policy: dict, record, resolve, violations_fd):
    """The audit hook: a closure over immutable policy values and captured functions."""
    getframe, get_ident = sys._getframe, _thread.get_ident
    busy: set = set()
    checks = _event_checks(policy, resolve, violations_fd)
    raise_error = PermissionError

    def hook(event, args):
        check = checks.get(event)
        if check is None:
            return
        me = get_ident()
        if me in busy:
            return
        busy.add(me)
        try:
            caller = getframe(1).f_code.co_filename
            message = check(args, caller in policy["candidates"])
        except Exception as exc:      # an unresolvable path (or a guard bug) refuses the act
            message = f"{event}: {exc}"
        finally:
            busy.discard(me)
        if message:
            record(message)
            raise raise_error(f"popsearch guard: {message}")
    return hook


def _event_checks(policy: dict, resolve, violations_fd) -> dict:
    """event name -> check(args, direct) returning a violation message or None; each event has one check
    (`exec` and `os.rename` have their own, which also cover the direct call and the write rule)."""
    read_ok, write_ok, open_ok = _path_checks(policy, resolve)
    checks: dict = {}

    def put(event: str, check) -> None:
        if event in checks:
            raise ValueError(f"guard event {event!r} has two checks")
        checks[event] = check

    put("open", lambda a, d: open_ok(a[0], a[2] if len(a) > 2 else 0))
    put("os.listdir", lambda a, d: read_ok(a[0] if a[0] is not None else ".", "lists"))
    put("os.scandir", lambda a, d: read_ok(a[0] if a[0] is not None else ".", "lists"))
    for event, positions in WRITE_EVENTS.items():
        put(event, _write_event_check(event, positions, write_ok, violations_fd))
    put("os.rename", _rename_check(policy, resolve, write_ok))
    for event in PROCESS_EVENTS:
        put(event, _process_check(event, policy))
    for event in NETWORK_EVENTS:
        put(event, lambda a, d, e=event: None if policy["network"] else f"uses the network ({e})")
    for event in DIRECT_EVENTS + CTYPES_EVENTS:
        put(event, lambda a, d, e=event: f"calls {e} from the candidate's code" if d else None)
    for event in ALWAYS_DENIED:
        put(event, _denied_check(event, policy))
    put("object.__getattr__", lambda a, d: (
        f"reads the interpreter's internals ({a[1]}) from the candidate's code"
        if d and a[1] in FRAME_ATTRS else None))
    put("object.__setattr__", _setattr_check)
    put("object.__delattr__", _setattr_check)
    put("import", _import_check(policy, resolve))
    put("os.putenv", _pinned_env_check)
    put("os.unsetenv", _pinned_env_check)
    put("exec", _exec_check(policy, resolve))
    return checks


def _path_checks(policy: dict, resolve):
    deny_read, allow_read = policy["deny_read"], policy["allow_read"]
    allow_write, protect = policy["allow_write"], policy["protect"]
    no_code, code_ok, own_pid = policy["no_code"], policy["code_ok"], str(policy["pid"])
    checkpoint_paths, checkpoint_fn = policy["checkpoint_paths"], policy["checkpoint_fn"]
    int_type = int

    def read_ok(path, verb="reads"):
        if type(path) is int_type:
            return None
        where = resolve(path)
        if _under(where, deny_read):
            return f"{verb} {where}: the validation split and the judge's files are off limits"
        if where.startswith("/proc/"):
            pid = where.split("/")[2]
            if pid.isdigit() and pid != own_pid:
                return f"{verb} {where}: another process's details"
        if allow_read is not None and not _under(where, allow_read) and not _under(where, allow_write):
            return f"{verb} {where}: outside the folders a trial may read"
        return None

    def write_ok(path, verb="writes", creates=False):
        if type(path) is int_type:
            return None
        where = resolve(path)
        if where in protect:
            return f"{verb} {where}: a file the trial may not change"
        if not _under(where, allow_write):
            return f"{verb} {where}: outside the scratch folder"
        if creates and where.endswith(CODE_SUFFIXES) and _under(where, no_code) and not _under(where, code_ok):
            return f"{verb} Python code {where} into the scratch folder"
        if checkpoint_fn is not None and _watched(where, checkpoint_paths):
            problems = checkpoint_fn()
            if problems:
                return "; ".join(problems)
        return None

    def open_ok(path, flags):
        if flags & WRITE_FLAGS:
            return write_ok(path, creates=True)
        return read_ok(path)
    return read_ok, write_ok, open_ok


def _watched(where: str, paths) -> bool:
    """A checkpoint path itself or a temporary file beside it (atomic saves write [.]name.tmp*)."""
    folder, _, name = where.rpartition("/")
    for path in paths:
        p_folder, _, p_name = path.rpartition("/")
        if folder == p_folder and name.lstrip(".").startswith(p_name):
            return True
    return False


def _write_event_check(event, positions, write_ok, violations_fd):
    def check(args, direct):
        if event == "os.truncate" and type(args[0]) is int and args[0] == violations_fd:
            return "truncates the guard's own record"
        for i in positions:
            if i < len(args):
                problem = write_ok(args[i], f"{event} on")
                if problem:
                    return problem
        return None
    return check


def _rename_check(policy, resolve, write_ok):
    paths, fn = policy["checkpoint_paths"], policy["checkpoint_fn"]

    def check(args, direct):
        for i, path in enumerate(args[:2]):
            problem = write_ok(path, "os.rename on", creates=i == 1)
            if problem:
                return problem
        if fn is not None and type(args[1]) in (str, bytes) and resolve(args[1]) in paths:
            problems = fn()
            return "; ".join(problems) if problems else None
        return None
    return check


def _process_check(event, policy):
    programs, writable = policy["programs"], policy["allow_write"]

    def check(args, direct):
        if not policy["subprocess"]:
            return f"starts a process ({event})"
        if event in ("os.system", "os.startfile", "pty.spawn", "os.forkpty", "os.fork"):
            return f"starts a process other than a compiler ({event})"
        program = _program_of(event, args)
        found = _which(program)
        if os.path.basename(program) in programs and found and not _under(found, writable):
            return None
        return f"starts a process that is not an installed compiler: {program}"
    return check


def _which(program: str) -> str:
    """The real path of the file a program name runs ('' when none is found)."""
    if "/" in program:
        return os.path.realpath(program) if os.path.isfile(program) else ""
    for folder in os.environ.get("PATH", "").split(":"):
        path = os.path.join(folder or ".", program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.realpath(path)
    return ""


def _program_of(event, args) -> str:
    """The program an exec-like event starts ('' where unknown or not a plain string)."""
    first = args[0] if args else None
    if first is None and event == "subprocess.Popen" and len(args) > 1:
        rest = args[1]
        first = rest[0] if type(rest) in (list, tuple) and rest else rest
    if type(first) is bytes:
        first = bytes.decode(first, "utf-8", "replace")
    return first if type(first) is str else ""


def _denied_check(event, policy):
    def check(args, direct):
        if event == "ctypes.dlopen":
            name = args[0] if args and type(args[0]) is str else ""
            if not direct and os.path.basename(name).startswith(GPU_LIBRARIES):
                return None
            return f"loads native code with ctypes ({name or 'the running program'})"
        if event in ("os.kill", "os.killpg", "signal.pthread_kill"):
            if event != "signal.pthread_kill" and args and args[0] == policy["pid"]:
                return None
            if policy["subprocess"]:
                return None          # its own compile workers; Landlock bars signals to others
            return f"sends a signal ({event} {args[0] if args else ''})"
        return f"{event} is not allowed in a trial"
    return check


def _owner_module(obj) -> str:
    """The module that defined a function or class, read without running any code of the object's."""
    if type(obj) is types.FunctionType:
        module = obj.__module__
    elif isinstance(obj, type):
        module = type.__dict__["__dict__"].__get__(obj).get("__module__")
    else:
        module = None
    return module if type(module) is str else ""


def _setattr_check(args, direct):
    obj, name = args[0], args[1]
    code_attr = name in ("__code__", "__globals__", "__closure__", "__defaults__", "__kwdefaults__")
    module = _owner_module(obj)
    if module.split(".")[0] in ("judge", "trainer") and (direct or code_attr):
        return f"changes {name} of an object of {module}"
    if direct and code_attr:
        return f"replaces {name} of a function from the candidate's code"
    return None


def _pinned_env_check(args, direct):
    """Where kernel code is found (KERNEL_ENV) stays as the bootstrap left it."""
    name = args[0].decode("utf-8", "replace") if type(args[0]) is bytes else str(args[0])
    if name in KERNEL_ENV:
        return f"changes {name} (where kernel code is loaded from is fixed before the candidate runs)"
    return None


def _import_check(policy, resolve):
    watch, no_code = policy["watch"], policy["no_code"]

    def check(args, direct):
        name, path_list = args[0], args[2]
        if name in watch:
            return f"imports {name} again (a fixed module must not be shadowed or reloaded)"
        if isinstance(path_list, list):
            for entry in path_list:
                if type(entry) is not str:
                    continue
                if entry in ("", ".") or _under(resolve(entry), no_code):
                    return f"imports {name} with the scratch folder on sys.path"
        return None
    return check


def _exec_check(policy, resolve):
    candidates, no_code, code_ok = policy["candidates"], policy["no_code"], policy["code_ok"]
    watch_files = policy["watch_files"]

    def check(args, direct):
        if direct:
            return "calls exec from the candidate's code"
        if type(args[0]) is not types.CodeType or args[0].co_name != "<module>":
            return None
        filename = args[0].co_filename
        if not filename.startswith("/") or filename in candidates:
            return None
        where = resolve(filename)
        if where in watch_files:
            return f"runs the module code of {where} again (a fixed module must not be reloaded)"
        if where not in candidates and _under(where, no_code) and not _under(where, code_ok):
            return f"runs code from {where} (written into the scratch folder)"
        return None
    return check
