"""run.sh refuses to start an install that cannot fit on the disk."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_setup_stops_before_installing_on_a_nearly_full_disk(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "df").write_text("#!/bin/sh\necho 'Filesystem 1024-blocks Used Available "
                             "Capacity Mounted'\necho '/dev/x 9 9 3145728 99% /'\n")
    (fake / "df").chmod(0o755)
    venv = tmp_path / "env" / ".venv"
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", VENV=str(venv))
    proc = subprocess.run(["bash", str(REPO / "run.sh"), "test"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "needs about 8 GB of free disk" in proc.stderr and "has 3 GB free" in proc.stderr
    assert not venv.exists()
