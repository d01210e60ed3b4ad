"""Writing small files so that readers never see half of one (imports nothing from gladiff)."""
from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a hidden temporary file beside ``path``, fsync it and rename it over ``path``:
    readers see the old file or the whole new one, and a failure (a full disk, a killed write that
    raises) removes the temporary file and re-raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
