"""The bootstrap of a trial process, `python -m trainer.sandbox train.py` in the scratch folder: imports and
freezes the fixed helpers, walls the process in (Landlock, audit hook, rlimits), runs the candidate, verifies.

Exit 86 (VIOLATION_EXIT) with "POPSEARCH-VIOLATION: ..." lines on stderr and in the violations file when the
candidate broke a rule; exit 87 when the sandbox itself could not be set up; else the candidate's own code."""
from __future__ import annotations

import hashlib
import os
import sys

# Run as the bootstrap, nothing may be imported from the scratch folder (the current one): drop it from
# sys.path before any other import.
_SCRATCH = os.path.realpath(os.getcwd())
if __name__ == "__main__":
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.realpath(p) != _SCRATCH]

import resource  # noqa: E402
import runpy  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
import types  # noqa: E402

from judge import guard  # noqa: E402
from judge.adopted import ADOPTED, PREPARE, protocol  # noqa: E402
from judge.landlock import landlock  # noqa: E402
from judge.spec import ENV_TRAIN_DIR, ENV_WEIGHTS  # noqa: E402
from trainer.spec import ENV_DEVICE  # noqa: E402

SCRIPT = "train.py"
RUNNER_FILES = ("train.log",)                    # what the runner itself keeps in the scratch folder
SETUP_EXIT = 87                                  # the sandbox could not be set up (not the candidate's doing)
VIOLATIONS_FILE = ".popsearch_violations"        # default record, in the scratch folder
ENV_VIOLATIONS = "POPSEARCH_VIOLATIONS"          # runner: path of the record (best outside the scratch folder)
ENV_ALLOW_SUBPROCESS = "POPSEARCH_ALLOW_SUBPROCESS"  # "1"/"0"; default: allowed (compilers only) on cuda
ENV_MEMORY_MB = "POPSEARCH_MEMORY_MB"            # address-space limit on CPU (RLIMIT_AS); 0 = none
ENV_FILE_MB = "POPSEARCH_FILE_MB"                # largest file the trial may write (RLIMIT_FSIZE)
ENV_SCRATCH_MB = "POPSEARCH_SCRATCH_MB"          # most the scratch folder may hold (watchdog)
ENV_LANDLOCK = "POPSEARCH_LANDLOCK"              # "0" turns the kernel sandbox off (debugging only)
ENV_EXTRA_READ = "POPSEARCH_SANDBOX_READ"        # operator: more folders a trial may read (':'-separated)
ENV_EXTRA_WRITE = "POPSEARCH_SANDBOX_WRITE"      # operator: more folders a trial may write
ENV_COMPILE_CACHE = "TORCHINDUCTOR_CACHE_DIR"
DEFAULT_FILE_MB = 8192
DEFAULT_SCRATCH_MB = 16384
MEMORY_FRACTION = 0.75                           # default RLIMIT_AS on CPU: this share of physical memory
DISK_POLL_SECONDS = 1.0
FIXED_HELPERS = ("torch", "numpy", "judge.loader", "judge.handoff", "trainer.harness", "trainer.attention",
                 "trainer.flops")
FROZEN_MODULES = ("torch", "torch.nn", "torch.nn.functional", "torch.optim", "time", "math", "builtins")
FROZEN_CLASSES = (("torch", "Tensor"), ("torch.nn", "Module"), ("torch.optim", "Optimizer"))
# Attributes that torch itself rewraps when torch._dynamo is imported lazily (torch.compile): not a patch.
LAZY_REWRAPPED = {"torch": {"manual_seed"}, "torch.nn.Module": {"__init__", "__setstate__"}}
DATA_FOLDER = "data"                             # DataConfig.data_dir() = CACHE/data/<fingerprint>
HF_CACHES = ("HF_HUB_CACHE", "HF_HOME", "KERNELS_CACHE", "POPSEARCH_KERNEL_DIR")


class SetupError(Exception):
    """The sandbox cannot be built as asked (exit 87)."""


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = setup(argv)
    except SetupError as exc:
        _say(f"POPSEARCH-SANDBOX: {exc}")
        os._exit(SETUP_EXIT)
    code = run_candidate(settings)
    finish(settings, code)


# ---------------------------------------------------------------------------------------------- setup
def setup(argv) -> dict:
    """Everything before the candidate runs; returns the settings the run and the final check need."""
    scratch = _SCRATCH
    if argv != [SCRIPT]:
        raise SetupError(f"usage: python -m trainer.sandbox {SCRIPT} (got {argv})")
    check_scratch(scratch)
    s = read_settings(scratch)
    prepare_env(s)
    s["violations_fd"] = open_record(s["violations"])
    bind_prepare(s)
    set_limits(s)
    roots = walls(s)
    if s["landlock"]:
        try:
            s["landlock_abi"] = landlock(read=roots["landlock_read"], write=roots["write_dirs"],
                                         devices=roots["devices"], execute=s["subprocess"])
        except OSError as exc:
            raise SetupError(f"Landlock failed: {exc}") from exc
    import_helpers()
    s["frozen"] = freeze()
    s["violations_list"] = guard.lock_down(
        deny_read=roots["deny_read"], allow_read=roots["read"], allow_write=roots["write"],
        allow_subprocess=s["subprocess"], allow_network=False, protect=roots["protect"],
        candidate_files=[s["script"]], no_code_roots=[scratch], code_ok_roots=[s["cache"], s["tmp"]],
        watch_modules=sorted(n for n in sys.modules if n.split(".")[0] in ("judge", "trainer", "torch")),
        violations_fd=s["violations_fd"], checkpoint=(s["checkpoints"], lambda: verify(s["frozen"])))
    tempfile.tempdir = s["tmp"]
    _watch_disk(scratch, s["scratch_mb"], s["violations_fd"])
    signal.signal(signal.SIGXFSZ, _file_too_big(s["violations_fd"], s["file_mb"]))
    _say(f"popsearch-sandbox: landlock abi {s.get('landlock_abi', 0)}, subprocess "
         f"{'compilers only' if s['subprocess'] else 'no'}, network no")
    return s


def bind_prepare(s: dict) -> None:
    """For an adopted script (judge/adopted.py's protocol): trainer/adopted.py as its `prepare`, bound to this
    trial's data and to the violations record while the process is still trusted (the tokenizer is read here)."""
    try:
        with open(s["script"], "rb") as f:
            source = f.read().decode("utf-8", "replace")
    except OSError as exc:
        raise SetupError(f"cannot read {s['script']}: {exc}") from exc
    if protocol(source) != ADOPTED:
        return
    from trainer import adopted
    write, exit_now, fd = os.write, os._exit, s["violations_fd"]
    adopted.bind(s["data_dir"], lambda message: _record_and_exit(write, fd, exit_now, message))
    sys.modules[PREPARE] = adopted


def check_scratch(scratch: str) -> None:
    """The scratch folder must hold the candidate's train.py and nothing else (but the runner's log)."""
    names = sorted(os.listdir(scratch))
    extra = [n for n in names if n != SCRIPT and n not in RUNNER_FILES]
    if SCRIPT not in names or extra:
        raise SetupError(f"scratch folder {scratch} must hold only {SCRIPT}; it holds {names}")


def read_settings(scratch: str) -> dict:
    env = os.environ
    train_dir = env.get(ENV_TRAIN_DIR, "")
    if not train_dir or not os.path.isdir(train_dir):
        raise SetupError(f"{ENV_TRAIN_DIR}={train_dir!r} is not a folder")
    device = env.get(ENV_DEVICE, "cpu")
    allow = env.get(ENV_ALLOW_SUBPROCESS)
    weights = env.get(ENV_WEIGHTS) or os.path.join(scratch, "weights.pt")
    cache = env.get(ENV_COMPILE_CACHE) or os.path.join(scratch, ".cache", "inductor")
    return dict(
        scratch=scratch, script=os.path.join(scratch, SCRIPT), device=device,
        train_dir=os.path.realpath(train_dir),
        data_dir=os.path.realpath(os.path.dirname(os.path.realpath(train_dir))),
        subprocess=(allow == "1") if allow is not None else device == "cuda",
        weights=os.path.realpath(weights), cache=os.path.realpath(cache),
        tmp=os.path.join(scratch, ".tmp"),
        violations=os.path.realpath(env.get(ENV_VIOLATIONS) or os.path.join(scratch, VIOLATIONS_FILE)),
        memory_mb=_int_env(ENV_MEMORY_MB, _default_memory_mb() if device != "cuda" else 0),
        file_mb=_int_env(ENV_FILE_MB, DEFAULT_FILE_MB),
        scratch_mb=_int_env(ENV_SCRATCH_MB, DEFAULT_SCRATCH_MB),
        landlock=env.get(ENV_LANDLOCK, "1") != "0")


def prepare_env(s: dict) -> None:
    """Point every cache and temp folder of torch, triton and CUDA into writable places."""
    os.makedirs(s["tmp"], exist_ok=True)
    os.makedirs(s["cache"], exist_ok=True)
    env = os.environ
    sys.dont_write_bytecode = True                            # lazy imports must not write __pycache__
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    hf_default = os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    if not env.get("HF_HOME") and os.path.isdir(hf_default):
        env["HF_HOME"] = hf_default                           # the kernel hub cache (FA3), read-only
    env["TMPDIR"] = s["tmp"]
    env["HOME"] = s["scratch"]
    env["XDG_CACHE_HOME"] = os.path.join(s["scratch"], ".cache")
    env[ENV_COMPILE_CACHE] = s["cache"]
    env.setdefault(ENV_WEIGHTS, s["weights"])
    env.setdefault("TRITON_CACHE_DIR", os.path.join(s["cache"], "triton"))
    env.setdefault("TRITON_HOME", s["cache"])
    env.setdefault("CUDA_CACHE_PATH", os.path.join(s["cache"], "nv"))
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")     # no python compile workers to start
    s["checkpoints"] = [s["weights"]]


def open_record(path: str) -> int:
    """The append-only violations record, opened before the walls go up and kept open."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise SetupError(f"cannot open the violations record {path}: {exc}") from exc


def set_limits(s: dict) -> None:
    """Hard limits (soft = hard): no core files, no file above file_mb, on CPU no address space above memory_mb."""
    limits = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, s["file_mb"] << 20)]
    if s["memory_mb"] > 0:
        limits.append((resource.RLIMIT_AS, s["memory_mb"] << 20))
    for which, value in limits:
        resource.setrlimit(which, (value, value))


def walls(s: dict) -> dict:
    """The paths of the audit hook's and Landlock's policies."""
    scratch, cache, data = s["scratch"], s["cache"], s["data_dir"]
    weights_dir = os.path.dirname(s["weights"])
    deny = [os.path.join(data, n) for n in sorted(os.listdir(data)) if os.path.join(data, n) != s["train_dir"]]
    parent = os.path.dirname(data)
    if os.path.basename(parent) == DATA_FOLDER:            # CACHE/data/<fingerprint>: the other data sets
        deny += [os.path.join(parent, n) for n in sorted(os.listdir(parent)) if os.path.join(parent, n) != data]
    keep = [scratch, cache, weights_dir, s["train_dir"]]
    deny = [d for d in deny if not _contains_any(d, keep)]
    packages = guard.module_roots(["judge", "trainer"])
    parents = {os.path.dirname(p) for p in packages}
    read = [r for r in guard.python_roots() if r not in parents]
    read += [*packages, *guard.SYSTEM_READ_ROOTS, s["train_dir"], *_hf_caches(), *_extra(ENV_EXTRA_READ)]
    for root in read:
        if _contains_any(root, [*deny, s["violations"]]):
            raise SetupError(f"{root} must be readable by the trial but holds {data} or the violations "
                             f"record; move the data cache")
    if s["subprocess"]:
        read += [r for r in guard.program_roots() if not _contains_any(r, [*deny, s["violations"]])]
    write_dirs = sorted({scratch, cache, weights_dir, *_extra(ENV_EXTRA_WRITE)})
    devices = list(guard.device_files())
    kernel_write = write_dirs + (["/proc/self"] if s["device"] == "cuda" else [])   # CUDA writes there
    return dict(deny_read=deny, read=read + devices, landlock_read=read, write=write_dirs + devices,
                write_dirs=kernel_write, devices=devices,
                protect=[s["violations"], s["script"], *(os.path.join(scratch, n) for n in RUNNER_FILES)])


def _contains_any(root: str, paths) -> bool:
    """root is one of paths or a folder above one of them (Landlock cannot carve holes in a rule)."""
    return any(p == root or p.startswith(root.rstrip("/") + "/") for p in paths)


def _extra(name: str) -> list[str]:
    return [os.path.realpath(p) for p in os.environ.get(name, "").split(":") if p]


def _hf_caches() -> list[str]:
    found = [os.environ[k] for k in HF_CACHES if os.environ.get(k)]
    return [os.path.realpath(p) for p in found if os.path.isdir(p)]


def import_helpers() -> None:
    """Import the fixed helpers the candidate may use (those that exist) while the process is still trusted."""
    import importlib
    for name in FIXED_HELPERS:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            if exc.name != name:
                raise


# ---------------------------------------------------------------------------------------------- freeze
def freeze() -> dict:
    """Identities of every attribute of the fixed modules and classes, and hashes of the helpers' files."""
    spaces = {}
    for name in sorted(sys.modules):
        if name.split(".")[0] in ("judge", "trainer") or name in FROZEN_MODULES:
            module = sys.modules[name]
            if module is not None:
                spaces[name] = dict(vars(module))
                spaces.update(_class_spaces(module, name))
    for module_name, cls in FROZEN_CLASSES:
        spaces[f"{module_name}.{cls}"] = dict(vars(getattr(sys.modules[module_name], cls)))
    return {"spaces": spaces, "files": _file_hashes()}


def _class_spaces(module, name: str) -> dict:
    """Classes defined in judge/trainer modules: their own attributes."""
    if name.split(".")[0] not in ("judge", "trainer"):
        return {}
    out = {}
    for attr, value in vars(module).items():
        if isinstance(value, type) and getattr(value, "__module__", "") == name:
            out[f"{name}.{attr}"] = dict(vars(value))
    return out


def _file_hashes() -> dict:
    hashes = {}
    for root in guard.module_roots(["judge", "trainer"]):
        for entry in sorted(os.listdir(root)):
            if entry.endswith(".py"):
                path = os.path.join(root, entry)
                with open(path, "rb") as f:
                    hashes[path] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def verify(frozen: dict) -> list[str]:
    """What changed since freeze(): replaced or deleted attributes, edited helper files."""
    problems, removed = [], []
    for space, before in frozen["spaces"].items():
        if any(space.startswith(r + ".") for r in removed):
            continue
        now = _space_now(space)
        if now is None:
            problems.append(f"removed {space} (from sys.modules or its module)")
            removed.append(space)
            continue
        skip = LAZY_REWRAPPED.get(space, ())
        for attr, value in before.items():
            if attr in skip or not _is_code(value):
                continue
            if attr not in now:
                problems.append(f"deleted {space}.{attr}")
            elif now[attr] is not value:
                problems.append(f"replaced {space}.{attr} (monkeypatching a fixed module)")
    for path, digest in frozen["files"].items():
        try:
            with open(path, "rb") as f:
                same = hashlib.sha256(f.read()).hexdigest() == digest
        except OSError:
            same = False
        if not same:
            problems.append(f"edited or removed {path}")
    return problems[:20]


def _is_code(value) -> bool:
    """Functions, classes, modules and other callables: what monkeypatching replaces (data may change)."""
    return callable(value) or isinstance(value, (types.ModuleType, staticmethod, classmethod, property))


def _space_now(space: str):
    if space in sys.modules:
        return vars(sys.modules[space])
    module_name, _, cls = space.rpartition(".")
    holder = sys.modules.get(module_name)
    value = getattr(holder, cls, None) if holder is not None else None
    return vars(value) if isinstance(value, type) else None


# ---------------------------------------------------------------------------------------------- watchdogs
def _watch_disk(scratch: str, limit_mb: int, fd: int) -> None:
    """A daemon thread: the scratch folder's size, every DISK_POLL_SECONDS; past limit_mb, stop the trial."""
    scandir, sleep, write, exit_now = os.scandir, threading.Event().wait, os.write, os._exit
    limit = limit_mb << 20

    def size(path: str) -> int:
        total = 0
        try:
            with scandir(path) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        total += size(entry.path)
                    else:
                        total += entry.stat(follow_symlinks=False).st_blocks * 512
        except OSError:
            pass
        return total

    def loop() -> None:
        while True:
            used = size(scratch)
            if used > limit:
                _record_and_exit(write, fd, exit_now,
                                 f"fills the disk: the scratch folder holds {used >> 20} MB > {limit_mb} MB")
            sleep(DISK_POLL_SECONDS)
    threading.Thread(target=loop, name="popsearch-disk-watch", daemon=True).start()


def _file_too_big(fd: int, file_mb: int):
    write, exit_now = os.write, os._exit

    def handler(signum, frame):
        _record_and_exit(write, fd, exit_now, f"fills the disk: a file grew past the limit of {file_mb} MB")
    return handler


def _record_and_exit(write, fd: int, exit_now, message: str) -> None:
    line = (guard.VIOLATION_PREFIX + message + "\n").encode()
    for target in (2, fd):
        try:
            write(target, line)
        except OSError:
            pass
    exit_now(guard.VIOLATION_EXIT)


# ---------------------------------------------------------------------------------------------- run
def run_candidate(s: dict) -> int:
    """Run train.py as __main__; its exit status (1 for an uncaught exception)."""
    sys.argv = [SCRIPT]
    try:
        runpy.run_path(s["script"], run_name="__main__")
    except SystemExit as exc:
        return _exit_status(exc.code)
    except BaseException:          # noqa: BLE001 - the candidate's error, shown as Python would
        traceback.print_exc()
        return 1
    return 0


def _exit_status(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def finish(s: dict, code: int) -> None:
    """The final check: violations recorded (even those the candidate swallowed) or frozen things changed."""
    problems = verify(s["frozen"])
    for problem in problems:
        _say(guard.VIOLATION_PREFIX + problem)
        try:
            os.write(s["violations_fd"], (guard.VIOLATION_PREFIX + problem + "\n").encode())
        except OSError:
            pass
    recorded = s["violations_list"] or os.fstat(s["violations_fd"]).st_size > 0
    _flush()
    os._exit(guard.VIOLATION_EXIT if problems or recorded else code)


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SetupError(f"{name}={raw!r} is not a whole number") from exc


def _default_memory_mb() -> int:
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return int(pages * size * MEMORY_FRACTION) >> 20


def _say(line: str) -> None:
    try:
        os.write(2, (line + "\n").encode())
    except OSError:
        pass


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a candidate may have replaced the streams
            pass


if __name__ == "__main__":
    main()
