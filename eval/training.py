"""The training skeleton every network of the project shares (the U-Net, the refiner, the networks to come).

    resolve_device("cpu" | "cuda" | "cuda:N" | "auto") -> torch.device   (a clear error when CUDA is absent)
    torch_streams(seed, names) -> one torch.Generator per name, spawned from np.random.SeedSequence(seed)
    seeded_init(seed) -> a context in which network weights are drawn; the global torch RNG is restored after
    save_checkpoint(path, state) -> whole or absent (temporary file, then rename); load_checkpoint(path)
    check_resume(saved, wanted, keys) -> a resumed run has the settings of the run it continues

A training loop takes ``on_step(step, losses)``-style progress callbacks and never prints.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from simulator.io.errors import check_device
from simulator.io.files import atomic_write_bytes

DeviceName = Literal["cpu", "cuda", "auto"]  # or "cuda:N"


def resolve_device(device: str) -> torch.device:
    """'cpu', 'cuda' (or 'cuda:N') or 'auto' (CUDA when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(check_device(device))  # a bad one: the same --device message as every command


def stream_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent 32-bit seeds spawned from ``np.random.SeedSequence(seed)`` (never ``seed + k``: run s's
    streams share nothing with run s + 1's)."""
    return [int(child.generate_state(1)[0]) for child in np.random.SeedSequence(seed).spawn(n)]


def torch_streams(seed: int, names: Sequence[str]) -> dict[str, torch.Generator]:
    """One CPU ``torch.Generator`` per name, each seeded from its own spawned child of ``SeedSequence(seed)``;
    append new names at the end so that the existing streams keep their values."""
    return {name: torch.Generator().manual_seed(s) for name, s in zip(names, stream_seeds(seed, len(names)),
                                                                        strict=True)}


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Draw network weights from ``seed`` inside this block; the global torch RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a checkpoint is whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, *, weights_only: bool = True) -> dict:
    """A checkpoint's state on the CPU, with an error that names the file when it is absent or damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # noqa: BLE001 - torch raises several kinds for a damaged file
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None


def check_resume(saved: Mapping[str, Any], wanted: Mapping[str, Any], keys: Sequence[str], *, where: str) -> None:
    """Raise when a resumed run's settings (``keys`` of ``wanted``) differ from those of the run it continues."""
    differ = [k for k in keys if saved.get(k) != wanted.get(k)]
    if differ:
        raise ValueError(f"cannot resume {where}: " + ", ".join(
            f"{k} was {saved.get(k)!r}, now {wanted.get(k)!r}" for k in differ))
