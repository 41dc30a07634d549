"""The README and docs/: the generated pages match the code, every relative link
resolves, and the README stays a ten-minute read that points to every page."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from scripts import params_doc, stage_imports

from .conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def test_params_page_is_current():
    assert params_doc.PAGE.read_text() == params_doc.render(), (
        "docs/params.md is stale: run python scripts/params_doc.py")


def test_params_check_exits_1_naming_the_stale_file(tmp_path, monkeypatch, capsys):
    page = tmp_path / "params.md"
    page.write_text(params_doc.render().replace("| `train.lr` |", "| `train.lrr` |"))
    monkeypatch.setattr(params_doc, "PAGE", page)
    monkeypatch.setattr(params_doc, "REPO", tmp_path)
    monkeypatch.setattr(sys, "argv", ["params_doc.py", "--check"])
    with pytest.raises(SystemExit) as stop:
        params_doc.main()
    assert stop.value.code == 1
    assert "params.md is stale" in capsys.readouterr().err


def test_params_page_lists_every_key_of_params_yaml():
    def keys(node, prefix):
        for key, value in node.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict) and value:  # a section or a nested one
                yield from keys(value, dotted)
            else:
                yield dotted
    page = params_doc.PAGE.read_text()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in keys(params, ""):
        assert f"| `{key}` |" in page, key


def test_architecture_tables_are_current():
    stale = stage_imports.stale_blocks()
    assert not stale, (f"docs/architecture.md: {', '.join(stale)} stale: run "
                       f"python scripts/stage_imports.py --update-docs")


def test_a_stale_rerun_table_is_caught(tmp_path):
    page = tmp_path / "architecture.md"
    text = stage_imports.ARCHITECTURE.read_text()
    table = text.split(stage_imports.begin("rerun-table"), 1)[1]
    row = next(line for line in table.splitlines() if line.startswith("| `pipeline/"))
    page.write_text(text.replace(row + "\n", "", 1))
    assert stage_imports.stale_blocks(page) == ["rerun-table"]


def test_rerun_table_follows_outputs_through_templates():
    stages, params = stage_imports._load(REPO / "dvc.yaml")
    rows = {edited: (hit, down) for edited, hit, down in stage_imports.rerun_rows(stages, params)}
    # ${data.root} resolves from params.yaml: the demo's images feed prepare
    assert "prepare" in rows["pipeline/stages/demo.py"][1]
    # the members' outputs (metrics/seeds/<seed>/...) feed ensemble@<kind> (metrics/<kind>)
    assert "ensemble" in rows["pipeline/stages/member.py"][1]
    # a training-only section reruns no data stage
    data_stages = {"demo", "prepare", "embed", "clean", "split", "cache"}
    for section in ("params:train", "params:model", "params:members"):
        assert not data_stages & set(rows[section][0] + rows[section][1]), section
    # image decoding reruns only the stages that open item files (thumbnails included)
    assert set(rows["pipeline/modality/image/decoding.py"][0]) == {
        "embed", "clean", "split", "cache", "report"}
    # the near-copy calibration reruns clean and the split's audit, not embed
    assert rows["pipeline/dataquality/calibrate.py"][0] == ["clean", "split"]
    # the training loop reruns no data stage; the members section only the members
    assert not data_stages & set(sum(rows["pipeline/finetuning/engine.py"], []))
    assert rows["params:members"][0] == ["member"]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    for target in _links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.relative_to(REPO)}: {target} does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), (
                f"{page.relative_to(REPO)}: {target}: no heading #{anchor} in {file.name}")


def test_readme_is_a_ten_minute_read_that_links_every_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = {Path(t.partition("#")[0]) for t in _links(REPO / "README.md")}
    for page in sorted((REPO / "docs").glob("*.md")):
        assert page.relative_to(REPO) in linked, f"README.md does not link {page.name}"
