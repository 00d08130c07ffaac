"""Small shared helpers: atomic writes, seeded generators, devices, logging."""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Callable

import numpy as np
import torch


def atomic_write(path: str, write: Callable[[str], Any]) -> None:
    """Call `write(tmp_path)`, then move the temporary file onto `path`: a crash never leaves half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
