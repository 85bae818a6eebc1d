"""One error type for bad input, and the checks every command runs before any expensive work.

A ``UserError`` names the file (or the option) at fault, what is wrong and what was expected; ``cli.py`` prints
it as ``error: <file>: <what> (expected <what>)`` and exits with code 2. Anything else that escapes a command is
a bug: the CLI prints one line and the path of a log file holding the traceback, and exits with code 1.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class UserError(ValueError):
    """Bad input: ``file`` (a path or an option such as ``--device``), ``what`` is wrong, ``expected`` instead."""

    def __init__(self, file: str | Path, what: str, expected: str):
        self.file, self.what, self.expected = str(file), what, expected
        super().__init__(f"{self.file}: {what} (expected {expected})")


class OutputExistsError(UserError, FileExistsError):
    """An output folder or file that a command may not replace (it is not ours, or --overwrite is missing)."""


class InputNotFoundError(UserError, FileNotFoundError):
    """An input file or folder that does not exist (or holds nothing usable)."""


def read_json(path: str | Path, *, expected: str = "a JSON file") -> Any:
    """The parsed JSON of ``path``; a missing, unreadable or malformed file is a ``UserError`` naming it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(path, "is a folder", expected)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputNotFoundError(path, "does not exist", expected) from None
    except UnicodeDecodeError:
        raise UserError(path, "is not text (binary data)", expected) from None
    except json.JSONDecodeError as err:
        raise UserError(path, f"is not valid JSON ({err})", expected) from None
    except OSError as err:
        raise UserError(path, f"cannot be read ({err.strerror})", expected) from None


def read_text_file(path: str | Path, *, expected: str) -> str:
    """The UTF-8 text of a regular file; a folder, a missing or a binary file is a ``UserError`` naming it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(path, "is a folder", expected)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(path, "does not exist", expected) from None
    except UnicodeDecodeError:
        raise UserError(path, "is not text (binary data)", expected) from None
    except OSError as err:
        raise UserError(path, f"cannot be read ({err.strerror})", expected) from None


def existing_folder(path: str | Path, *, expected: str) -> Path:
    """``path`` as a Path when it is an existing folder, else a ``UserError``."""
    path = Path(path)
    if not path.exists():
        raise InputNotFoundError(path, "does not exist", expected)
    if not path.is_dir():
        raise UserError(path, "is a file, not a folder", expected)
    return path


def probe_writable(path: str | Path, *, folder: bool = True) -> None:
    """Check that ``path`` (a folder to write, or a file when ``folder`` is False) can be created or replaced,
    by creating and deleting a probe file where it will go; nothing is left behind.

    A path under an existing file, in a read-only folder or on a full disk is a ``UserError``.
    """
    path = Path(path)
    expected = "a writable folder path" if folder else "a writable file path"
    if path.exists() and folder and not path.is_dir():
        raise UserError(path, "is a file", expected + " (an absent, empty or semsynth-written folder)")
    if path.exists() and not folder and path.is_dir():
        raise UserError(path, "is a folder", expected)
    anchor = path if (folder and path.is_dir()) else path.parent
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise UserError(path, f"lies under {anchor}, which is a file", expected)
    try:
        fd, probe = tempfile.mkstemp(dir=anchor, prefix=".semsynth-probe.", suffix=".tmp")
    except OSError as err:
        raise UserError(path, f"cannot be written in {anchor} ({err.strerror})", expected) from None
    try:
        os.write(fd, b"probe")
    except OSError as err:
        raise UserError(path, f"cannot be written in {anchor} ({err.strerror})", expected) from None
    finally:
        os.close(fd)
        Path(probe).unlink(missing_ok=True)


def check_device(device: str, *, allowed: tuple[str, ...] = ("cpu", "cuda", "auto")) -> str:
    """``device`` when it names an allowed device that exists here; 'cuda' without a GPU is a ``UserError``."""
    kind = device.split(":", 1)[0]
    if kind not in allowed:
        raise UserError("--device", f"{device!r} is not a device", " or ".join(
            f"{name}, {name}:N" if name == "cuda" else name for name in allowed))
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device", f"{device!r} but CUDA is not available on this machine",
                            " or ".join(name for name in allowed if name != "cuda"))
        if ":" in device:
            index = device.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise UserError("--device", f"{device!r} but this machine has {torch.cuda.device_count()} GPU(s)",
                                f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device


def log_internal_error(err: BaseException) -> Path:
    """Write the traceback of an unexpected error to a log file; returns its path."""
    import time
    import traceback

    folder = Path(tempfile.gettempdir()) / "semsynth-logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    path.write_text("".join(traceback.format_exception(err)))
    return path
