"""No function in pipeline/ runs over 60 lines (def to last line, docstring included):
a longer one is split into named steps (scripts/function_lengths.py lists the longest)."""

from scripts.function_lengths import lengths

LIMIT = 60


def test_no_pipeline_function_is_longer_than_the_limit():
    too_long = [f"{size} lines: {where}" for size, where in lengths() if size > LIMIT]
    assert not too_long, "split these into named steps:\n" + "\n".join(too_long)


def test_the_measure_counts_from_def_to_the_last_line(tmp_path, monkeypatch):
    import scripts.function_lengths as fl

    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "m.py").write_text(
        "def f():\n    '''doc'''\n    x = 1\n\n    return x\n\n\ndef g():\n    pass\n")
    monkeypatch.setattr(fl, "REPO", tmp_path)
    assert fl.lengths() == [(5, "pipeline/m.py:1 f"), (2, "pipeline/m.py:8 g")]
