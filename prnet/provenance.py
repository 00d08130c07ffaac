"""What a result was made with: the code (git commit and its uncommitted changes), the packages and the machine.

Every record a run writes carries `provenance(device)`, so that a figure that does not reproduce can be traced to
the code or the machine that made it. `code_changed(before, after)` tells whether the code changed while a run was
using it: modules are imported lazily, so an edit during a run can change the run's behaviour half-way.
`code_differences(record, paths)` tells which files a stored record's code and this checkout's differ in, so that a
script reusing a record made with other code can say so; `arithmetic_differences(a, b)` which fields of two records'
machines and packages can make the same computation give other floats (a comparison paired by seed across them is
not one of identical trainings).
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from typing import Optional

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(args: list[str], repo: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(repo: str = REPO) -> dict:
    """{"git_commit": HEAD, "git_modified": the tracked files that differ from HEAD (sorted), "git_diff_sha1": the
    SHA-1 of `git diff HEAD` (None when there is no difference)}; all None unless `repo` is the top of a git checkout
    (an installed package inside some other repository, e.g. a virtual environment in a project, is not that
    repository's code). Untracked files are left out: outputs and data are not code."""
    top_head = (_git(["rev-parse", "--show-toplevel", "HEAD"], repo) or "").split()
    if len(top_head) != 2 or os.path.realpath(top_head[0]) != os.path.realpath(repo):
        return {"git_commit": None, "git_modified": None, "git_diff_sha1": None}
    head = top_head[1]
    status = _git(["status", "--porcelain", "--untracked-files=no"], repo) or ""
    modified = sorted(line[3:].strip() for line in status.splitlines() if line.strip())
    diff = _git(["diff", "HEAD"], repo) if modified else ""
    return {"git_commit": head, "git_modified": modified,
            "git_diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else None}


def package_versions() -> dict:
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__}


def _first_cpu() -> dict:
    """The first processor's fields in /proc/cpuinfo ("model name", "cpu family", ...); {} where there is none."""
    fields: dict = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (platform.processor() where there is none)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _first_cpu().get("model name") or platform.processor() or "unknown CPU"


def cpu_identity() -> dict:
    """What decides which CPU kernels torch and its libraries pick: the instruction set torch dispatches to
    (`cpu_capability`, e.g. AVX2, AVX512) and /proc/cpuinfo's family, model and stepping (None where unknown)."""
    cpu = _first_cpu()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    return {"cpu_capability": capability, "cpu_family": cpu.get("cpu family"), "cpu_model": cpu.get("model"),
            "cpu_stepping": cpu.get("stepping")}


# environment variables that change how the CPU libraries split and order their arithmetic
NUMERIC_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_DYNAMIC", "MKL_DYNAMIC", "MKL_CBWR",
               "CUBLAS_WORKSPACE_CONFIG")


def provenance(device: torch.device, repo: str = REPO) -> dict:
    """The code, packages and machine of a result, as plain JSON types (`numeric_env`: those of NUMERIC_ENV set)."""
    return {**git_state(repo), "versions": package_versions(), "device": str(device),
            "device_name": device_name(device), **cpu_identity(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "numeric_env": {k: os.environ[k] for k in NUMERIC_ENV if k in os.environ}}


# what decides a run's floating-point arithmetic: two runs of one config and seed train the same weights only where
# these agree (the CPU's fields matter on the CPU, where its kernels are picked by instruction set and model)
ARITHMETIC = ("versions", "device", "device_name", "numeric_env", "torch_threads")
CPU_ARITHMETIC = ("cpu_capability", "cpu_family", "cpu_model", "cpu_stepping")


def arithmetic_differences(a: Optional[dict], b: Optional[dict]) -> Optional[list[str]]:
    """The fields of two provenance() records that can make the same computation give other floats ('field: a ->
    b'); [] when they agree; None when either record lacks them (made before they were recorded)."""
    if not a or not b or any(k not in a or k not in b for k in ("versions", "device", "device_name")):
        return None
    keys = ARITHMETIC + (CPU_ARITHMETIC if str(a.get("device")) == "cpu" or str(b.get("device")) == "cpu" else ())
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def code_changed(before: dict, after: dict) -> bool:
    """Whether the code differs between two git_state() (or provenance()) records of one run."""
    return any(before.get(k) != after.get(k) for k in ("git_commit", "git_modified", "git_diff_sha1"))


def code_differences(record: Optional[dict], paths: tuple[str, ...], repo: str = REPO) -> Optional[list[str]]:
    """The files below `paths` (relative to the checkout's top) in which the code of a stored record (its provenance,
    or git_state()) differs from this checkout's working tree: those changed since its commit, and those it had
    uncommitted changes to. [] when none; None when it cannot be told (no commit recorded, not a git checkout, or
    a commit this clone does not have)."""
    commit, now = (record or {}).get("git_commit"), git_state(repo)
    if not commit or now["git_commit"] is None:
        return None
    if commit == now["git_commit"] and record.get("git_diff_sha1") == now["git_diff_sha1"]:
        return []  # made with this very code
    if _git(["cat-file", "-e", f"{commit}^{{commit}}"], repo) is None:
        return None
    changed = _git(["diff", "--name-only", commit, "--", *paths], repo)
    if changed is None:
        return None
    inside = [f for f in record.get("git_modified") or [] if any(f == p or f.startswith(p.rstrip("/") + "/")
                                                                 for p in paths)]
    return sorted(set(changed.split()) | set(inside))
