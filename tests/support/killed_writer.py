"""What a kronk process killed while writing a model file leaves behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_WRITE_AND_DIE = """
import os, sys
from pathlib import Path
from kronk.models.files import temp_path_for
temp = temp_path_for(Path(sys.argv[1]))
temp.write_bytes(b"half a copy")
print(temp, flush=True)
os._exit(9)
"""


def abandoned_temp(dest: Path) -> Path:
    """A temp file for `dest` from a process that died before renaming it into place."""
    done = subprocess.run(
        [sys.executable, "-c", _WRITE_AND_DIE, str(dest)], capture_output=True, text=True
    )
    assert done.returncode == 9, done.stderr
    temp = Path(done.stdout.strip())
    assert temp.parent == dest.parent and temp.is_file()
    return temp
