"""Result files: JSON, text and figures written atomically (temporary file in the same folder, fsync, rename)."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch


def write_text_atomic(path: str | Path, text: str, /) -> Path:
    """Write `text` to `path` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, payload: Any, /) -> Path:
    """Write `payload` as indented JSON to `path`, atomically (see `write_text_atomic`)."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True))


def save_figure_atomic(figure, path: str | Path, /) -> Path:
    """Save a matplotlib figure (format from the suffix) atomically, then close it."""
    import matplotlib.pyplot as plt  # only the commands that draw need matplotlib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=150, bbox_inches="tight")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        plt.close(figure)
    return path


def environment() -> dict[str, str]:
    """Versions and machine facts recorded with every result."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "threads": str(torch.get_num_threads()),
    }
