"""Small shared helpers: atomic writes, seeded generators, devices, logging."""
from __future__ import annotations

import logging
import os
import uuid
from typing import Any, Callable, Optional

import numpy as np
import torch


TMP_PREFIX = ".tmp-"


def atomic_write(path: str, write: Callable[[str], Any]) -> None:
    """Call `write(tmp_path)`, then move the temporary file onto `path`: a crash never leaves half a file.

    The temporary file (`.tmp-<random><ext>` beside `path`) is created with mode 0666 minus the umask, like any
    file a program opens for writing, so the result is as readable as the user's other files."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    while True:
        tmp = os.path.join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}{os.path.splitext(path)[1]}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # pragma: no cover - a 48-bit collision
            continue
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete the `.tmp-*` files a killed atomic_write left in `directory` (call it only while holding the
    directory's RunLock: another process's write in progress looks the same). Returns the names removed."""
    removed = []
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            if name.startswith(TMP_PREFIX) and os.path.isfile(os.path.join(directory, name)):
                os.remove(os.path.join(directory, name))
                removed.append(name)
    return removed


class LockedError(RuntimeError):
    """Another live process holds the lock."""


class RunLock:
    """An exclusive lock on a folder (`<folder>/.lock`, flock): held until release() or the process ends.

    The file records the holder's pid for the error message. The kernel drops a flock when its process dies, so a
    lock left by a killed run is simply taken over."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, ".lock")
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        import fcntl

        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(f"{self.directory} is in use by another run (pid {holder}): wait for it to finish, "
                              f"or choose another output_dir=...") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def torch_save_atomic(obj: Any, path: str) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def numpy_rng(*keys: int) -> np.random.Generator:
    """A generator that depends only on `keys`, e.g. numpy_rng(seed, epoch, index)."""
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in keys])


def torch_generator(*keys: int) -> torch.Generator:
    """A CPU torch.Generator that depends only on `keys`."""
    seed = int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1, np.uint64)[0])
    g = torch.Generator()
    g.manual_seed(seed & 0x7FFFFFFFFFFFFFFF)
    return g


def resolve_device(name: str = "auto") -> torch.device:
    """'auto': cuda, else mps, else cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
