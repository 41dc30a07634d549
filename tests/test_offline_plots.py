"""`dvc plots show` pages that draw offline: the template, and a real page in headless
Chromium with the network off (skipped, with the reason, where no Chromium is installed)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.reporting.offline_plots import TEMPLATE, template_html, write_template

from .conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_template(tmp_path_factory.mktemp("template") / "offline_plots.html")


def test_template_inlines_vega_and_keeps_dvc_placeholders(template):
    page = template.read_text()
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    assert "{scripts}" not in page  # DVC's CDN script tags would go there
    assert "<script src" not in page and "cdn.jsdelivr" not in page
    assert "window.vegaEmbed" in page and len(page) > 500_000  # the libraries themselves
    assert "Vega-Lite 5.21" in page


def test_repo_config_names_the_committed_template_and_it_is_current():
    """A clone set up without run.sh (an existing environment, an editor's DVC extension)
    has the template from git: it must be tracked and equal what the locked wheel gives
    (``python -m pipeline plots-template`` rewrites it after an upgrade)."""
    config = (REPO / ".dvc/config").read_text()
    assert "html_template = offline_plots.html" in config
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "/.dvc/offline_plots.html" not in ignored and "dvc_plots/" in ignored
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", ".dvc/offline_plots.html"],
                             cwd=REPO, capture_output=True, text=True)
    assert tracked.returncode == 0, "commit .dvc/offline_plots.html"
    assert (REPO / TEMPLATE).read_text(encoding="utf8") == template_html(), (
        "stale: run python -m pipeline plots-template and commit .dvc/offline_plots.html")


def _plots_page(project: Path, template: Path | None) -> Path:
    """`dvc plots show` of a small TSV in a fresh DVC project; with ``template`` named in its
    .dvc/config as this repository does."""
    project.mkdir()
    (project / "acc.tsv").write_text("step\tacc\n0\t0.5\n1\t0.7\n2\t0.8\n3\t0.9\n")
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=project, env=env, check=True)
    if template is not None:
        shutil.copy(template, project / ".dvc/offline_plots.html")
        subprocess.run([*dvc, "config", "plots.html_template", "offline_plots.html"],
                       cwd=project, env=env, check=True)
    subprocess.run([*dvc, "plots", "show", "acc.tsv", "-o", "out"], cwd=project, env=env,
                   check=True, capture_output=True)
    return project / "out/index.html"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
def test_page_draws_its_chart_offline_and_dvcs_own_page_does_not(template, tmp_path):
    script = [sys.executable, str(REPO / "scripts/check_plots.py")]
    page = _plots_page(tmp_path / "offline", template)
    done = subprocess.run([*script, str(page), "--screenshot", str(tmp_path / "a.png")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 charts, 1 drawn" in done.stdout
    # the committed template, as a fresh clone has it without run.sh, draws the same
    page = _plots_page(tmp_path / "clone", REPO / TEMPLATE)
    done = subprocess.run([*script, str(page), "--screenshot", str(tmp_path / "c.png")],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "1 charts, 1 drawn" in done.stdout, done.stdout
    # DVC's own page (Vega from a CDN) draws nothing with the network off: the check fails
    page = _plots_page(tmp_path / "cdn", None)
    done = subprocess.run([*script, str(page), "--screenshot", str(tmp_path / "b.png")],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "1 charts, 0 drawn" in done.stdout, done.stdout
