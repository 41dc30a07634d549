"""benchmarks/text.py --smoke runs end to end (tiny synthetic corpus, no shared data)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_text_benchmark_smoke() -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "text.py"), "--smoke"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| data | method | test accuracy [95 % CI] | test macro-F1 [95 % CI] |" in done.stdout
    assert "duplicate clusters across splits: 0" in done.stdout
    assert "not yet:" in done.stdout
