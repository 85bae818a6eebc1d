"""Output folders: what a command may write, replace and delete.

Every command that writes a folder writes a marker file, ``.semsynth-output.json``, holding the kind of output
and the entries that kind owns. A folder is *ours* when it has the marker of the same kind, or (folders written
before the marker existed) when a dataset's manifest.json or run.json (or a report's main JSON) says semsynth
wrote it. Only then may a command replace it, and it deletes only the entries its kind owns: any other entry
(a foreign file) makes it refuse, listing them. Nothing outside the owned names is ever deleted.

Whole-output writes (``staged_output``): a command builds its output in a temporary sibling folder and renames it
into place at the end, so a failure leaves either the old output or nothing, never half a result.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from simulator.io.errors import OutputExistsError, probe_writable

MARKER = ".semsynth-output.json"


@dataclass(frozen=True, slots=True)
class OutputKind:
    """A kind of output folder: the entries it owns, and how an unmarked (older) one is recognised."""

    name: str
    owns: tuple[str, ...]  # top-level names; anything else in the folder is foreign
    signatures: tuple[tuple[str, str], ...]  # (file, key): an unmarked folder is ours if file's JSON has key

    def owned(self, name: str) -> bool:
        """Owned entries, the marker and the temporary files of our atomic writes (``.<name>.*.tmp``)."""
        return name in self.owns or name == MARKER or (name.startswith(".") and name.endswith(".tmp"))


DATASET = OutputKind(
    "dataset",
    ("images", "labels", "records", "annotations.json", "manifest.json", "run.json", "preview.png"),
    (("manifest.json", "generator"), ("run.json", "plan_hash"), ("run.json", "generator")),
)
EVALUATION = OutputKind("evaluation", ("metrics.json", "per_image.csv", "report.html"),
                        (("metrics.json", "provenance"),))
REALISM = OutputKind("realism", ("realism.json", "realism.html", "realism.png"), (("realism.json", "c2st"),))
ROBUSTNESS = OutputKind("robustness", ("robustness.json", "per_image.csv", "report.html", "dataset"),
                        (("robustness.json", "criterion"),))
# validate keeps its simulated datasets (synthetic/, synthetic-sweep/<level>/) and reuses them, like robustness
VALIDATION = OutputKind("validation", ("validation.json", "validation.html", "synthetic", "synthetic-sweep"),
                        (("validation.json", "verdict"),))
KINDS = {kind.name: kind for kind in (DATASET, EVALUATION, REALISM, ROBUSTNESS, VALIDATION)}


def _json_keys(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def marker_kind(folder: Path) -> str | None:
    """The kind named by the folder's marker, or None (no marker, or not one of ours)."""
    data = _json_keys(folder / MARKER)
    return data.get("kind") if data.get("writer") == "semsynth" else None


def is_ours(folder: Path, kind: OutputKind) -> bool:
    """The folder was written by a semsynth command of this kind (marker, or an older folder's signature)."""
    if (folder / MARKER).exists():
        return marker_kind(folder) == kind.name
    for file, key in kind.signatures:
        value = _json_keys(folder / file).get(key)
        if value is not None and (key != "generator" or str(value).startswith("semsynth")):
            return True
    return False


def foreign_entries(folder: Path, kind: OutputKind) -> list[str]:
    """Top-level entries of ``folder`` that ``kind`` does not own, sorted."""
    return sorted(p.name for p in folder.iterdir() if not kind.owned(p.name))


def check_output_folder(folder: str | Path, kind: OutputKind, *, overwrite: bool, flag: str = "--overwrite") -> bool:
    """Validate an output folder before any work; returns True when it holds an earlier output to replace.

    Absent or empty: fine. Otherwise it must be ours (see ``is_ours``), hold no foreign entry, and ``overwrite``
    must be set (commands whose outputs are cheap reports pass ``overwrite=True``: they replace their own
    earlier result). The folder must also be writable (a probe file is created and deleted).
    """
    folder = Path(folder)
    probe_writable(folder)
    if not folder.exists() or not any(folder.iterdir()):
        return False
    what = f"an absent or empty folder, or one a semsynth command wrote as {kind.name} output"
    if not is_ours(folder, kind):
        entries = foreign_entries(folder, kind) or sorted(p.name for p in folder.iterdir())
        raise OutputExistsError(folder, f"is not empty and was not written by semsynth as {kind.name} output "
                        f"(holds {_listing(entries)}); nothing was changed", what)
    foreign = foreign_entries(folder, kind)
    if foreign:
        raise OutputExistsError(folder, f"holds entries that are not part of a {kind.name} output: "
                                f"{_listing(foreign)}; "
                        "refusing to replace it (move them away, or choose another folder)", what)
    if not overwrite:
        raise OutputExistsError(folder, f"is not empty: it holds a {kind.name} output",
                                f"{flag} to replace it, or another folder")
    return True


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def remove_owned(folder: Path, kind: OutputKind) -> None:
    """Delete the entries ``kind`` owns (and its marker) from ``folder``; nothing else is touched."""
    for entry in folder.iterdir():
        if kind.owned(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def write_marker(folder: Path, kind: OutputKind, command: str) -> None:
    data = {"writer": "semsynth", "kind": kind.name, "command": command, "owns": list(kind.owns)}
    (folder / MARKER).write_text(json.dumps(data, indent=1) + "\n")


def prepare_output_folder(folder: str | Path, kind: OutputKind, command: str, *, overwrite: bool) -> Path:
    """For outputs written in place (simulate: resumable): validate, delete the owned entries of an earlier
    output when replacing it, create the folder and write its marker."""
    folder = Path(folder)
    if check_output_folder(folder, kind, overwrite=overwrite):
        remove_owned(folder, kind)
    folder.mkdir(parents=True, exist_ok=True)
    write_marker(folder, kind, command)
    return folder


@contextmanager
def staged_output(folder: str | Path, kind: OutputKind, command: str, *, overwrite: bool) -> Iterator[Path]:
    """Write a whole output atomically: yields a temporary sibling folder to fill; on success the earlier
    output's owned entries are deleted and the sibling is renamed to ``folder``; on failure it is removed and
    ``folder`` is left as it was.

    Validation (``check_output_folder``) runs first, so a refusal costs nothing.
    """
    folder = Path(folder)
    replacing = check_output_folder(folder, kind, overwrite=overwrite)
    parent = folder.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".{folder.name}.", suffix=".partial"))
    try:
        write_marker(stage, kind, command)
        yield stage
        if replacing:
            remove_owned(folder, kind)
        os.replace(stage, folder)  # onto an absent or (now) empty folder: anything foreign was refused above
        os.chmod(folder, 0o777 & ~_umask())
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
