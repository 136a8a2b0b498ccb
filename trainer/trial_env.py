"""The environment of a trial or judge process: a clean minimal one built from the spec, never inherited whole.

Also where the caches live and where the sandbox writes its record of violations."""
from __future__ import annotations

import os
import re
from pathlib import Path

from judge.spec import ENV_CACHE, ENV_TRAIN_DIR, ENV_WEIGHTS
from trainer import sandbox
from trainer import spec as S
from judge.processes import ENV_TOKEN
from trainer.spec import ATTENTION_BACKENDS, ENV_ATTENTION, ENV_KERNEL_DIR, TrialSpec

ENV_COMPILE_CACHE = "POPSEARCH_COMPILE_CACHE"
PASS_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "LD_LIBRARY_PATH", "CUDA_HOME",
            "CUDA_PATH", "CUDA_DEVICE_ORDER", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRITON_CACHE_DIR")
PASS_ENV_PREFIXES = ("NCCL_", "NVSHMEM_", "TORCH_SYMM_MEM_", "KERNELS_")   # operator settings of the node
# Operator settings the driver reads once from its own environment and hands to every trial and judge process
# through TrialSpec.operator_env (so they hold on every node of a cluster): the attention backend and where an
# offline node finds the FA3 kernel, and the sandbox's knobs (trainer/sandbox.py).
OPERATOR_ENV = (ENV_ATTENTION, ENV_KERNEL_DIR, "LOCAL_KERNELS", sandbox.ENV_MEMORY_MB, sandbox.ENV_FILE_MB,
                sandbox.ENV_SCRATCH_MB, sandbox.ENV_LANDLOCK, sandbox.ENV_EXTRA_READ, sandbox.ENV_EXTRA_WRITE,
                sandbox.ENV_ALLOW_SUBPROCESS)


SCOPE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def cache_root(spec: TrialSpec) -> Path:
    """CACHE of the data layout CACHE/data/<fingerprint>; else $POPSEARCH_CACHE or ~/.cache/popsearch."""
    data = Path(spec.data_dir).resolve()
    if data.parent.name == "data":
        return data.parent.parent
    return Path(os.environ.get(ENV_CACHE) or "~/.cache/popsearch").expanduser()


def compile_cache(spec: TrialSpec) -> str:
    """The torch.compile cache of this trial and its judge: $POPSEARCH_COMPILE_CACHE or CACHE/inductor, narrowed
    to spec.compile_scope (a member), so a candidate cannot plant compiled code in other members' trials."""
    root = os.environ.get(ENV_COMPILE_CACHE) or str(cache_root(spec) / "inductor")
    scope = spec.compile_scope
    if not scope:
        return root
    if not SCOPE_NAME.fullmatch(scope):
        raise ValueError(f"compile_scope {scope!r}: letters, digits, '-', '_' and '.' only")
    return str(Path(root) / scope)


def _package_root() -> str:
    import trainer
    return str(Path(trainer.__file__).resolve().parents[1])


def base_env(spec: TrialSpec) -> dict:
    """A clean minimal environment for a trial or judge process of this spec (no inherited secrets)."""
    env = {k: v for k, v in os.environ.items() if k in PASS_ENV or k.startswith(PASS_ENV_PREFIXES)}
    env.setdefault("LANG", "C.UTF-8")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), os.environ.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(spec.threads)
    env[S.ENV_THREADS] = str(spec.threads)
    env[ENV_TRAIN_DIR] = str(Path(spec.data_dir) / "train")
    env["TORCHINDUCTOR_CACHE_DIR"] = compile_cache(spec)
    env.update(checked_operator_env(spec.operator_env))
    if spec.device == "cuda":
        visible = spec.gpu_index if spec.gpu_index is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(visible)
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def violations_path(scratch: Path) -> Path:
    """The sandbox's record of violations: beside the scratch folder, out of the candidate's reach."""
    return scratch.with_name(scratch.name + ".violations")


def operator_env(environ=None) -> dict:
    """The operator settings (OPERATOR_ENV) set in `environ` (default: this process's environment), checked."""
    environ = os.environ if environ is None else environ
    return checked_operator_env({k: environ[k] for k in OPERATOR_ENV if environ.get(k)})


def checked_operator_env(settings: dict) -> dict:
    """`settings` when every name is an operator setting and the attention ones make sense; else ValueError."""
    unknown = sorted(set(settings) - set(OPERATOR_ENV))
    if unknown:
        raise ValueError(f"operator settings {unknown} are not ones a trial takes (known: {', '.join(OPERATOR_ENV)})")
    force = settings.get(ENV_ATTENTION, "")
    if force and force not in ATTENTION_BACKENDS:
        raise ValueError(f"{ENV_ATTENTION}={force!r}: expected one of {', '.join(ATTENTION_BACKENDS)}")
    folder = settings.get(ENV_KERNEL_DIR, "")
    if folder and not Path(folder).is_dir():
        raise ValueError(f"{ENV_KERNEL_DIR}={folder}: no such folder (a local kernel repo with build/<variant>/)")
    return dict(settings)


def trial_env(spec: TrialSpec, scratch: Path, token: str) -> dict:
    env = base_env(spec)
    env[sandbox.ENV_VIOLATIONS] = str(violations_path(scratch))
    env[ENV_WEIGHTS] = str(scratch / "weights.pt")
    env[S.ENV_BUDGET_KIND] = spec.budget_kind
    env[S.ENV_BUDGET_SECONDS] = repr(float(spec.budget_seconds))
    env[S.ENV_BUDGET_FLOPS] = repr(float(spec.budget_flops))
    env[S.ENV_DEVICE] = spec.device
    env[S.ENV_SEED] = str(spec.seed)
    env[S.ENV_SEQ_LEN] = str(spec.seq_len)
    env[ENV_TOKEN] = token
    return env
