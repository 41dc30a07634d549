"""Pages of `dvc plots show` / `dvc plots diff` that draw their charts with no network.

DVC's own page loads Vega, Vega-Lite and Vega-Embed from a CDN, so offline it shows
nothing. This writes DVC's page template with those libraries inlined, taken from the
pinned vl-convert-python wheel (BSD-3-Clause; its JavaScript bundle is the libraries'
own BSD-3-Clause code). `.dvc/config` names the file (`plots.html_template`), so plain
`dvc plots show` and `dvc plots diff` use it. The file is committed, so a clone set up
any way draws plots; `bash run.sh` rewrites it only when a new wheel changes it (a test
fails while the committed one is stale).
"""

from __future__ import annotations

from pathlib import Path

# .dvc/config: [plots] html_template = offline_plots.html (relative to .dvc/)
TEMPLATE = Path(".dvc/offline_plots.html")
# DVC's plot specs declare Vega-Lite v5; the wheel carries several 5.x and 6.x builds
VEGA_LITE = "5.21"
# the names DVC's plot divs call, made global (the bundle itself defines none)
GLOBALS = "window.vegaEmbed = vegaEmbed; window.vega = vega; window.vegaLite = vegaLite;"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- {provenance}: written by python -m pipeline plots-template -->
    <script type="text/javascript">
(function () {{
{bundle}
}})();
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def template_html() -> str:
    """DVC's page template (placeholders ``{plot_divs}`` and ``{refresh_tag}``, no
    ``{scripts}``: DVC's CDN tags are left out) with the Vega libraries inlined, defining
    the globals ``vegaEmbed``, ``vega`` and ``vegaLite`` that DVC's plot divs call."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(GLOBALS, vl_version=VEGA_LITE)
    # the bundle is one inline script: nothing in it may end the tag or look like a
    # placeholder DVC fills in
    for token in ("</script", "{plot_divs}", "{refresh_tag}", "{scripts}"):
        if token in bundle:
            raise RuntimeError(f"the Vega bundle contains {token!r}: cannot inline it")
    from importlib.metadata import version

    provenance = (f"Vega {vl_convert.get_vega_version()}, Vega-Lite {VEGA_LITE}, "
                  f"Vega-Embed {vl_convert.get_vega_embed_version()} from "
                  f"vl-convert-python {version('vl-convert-python')}")
    return PAGE.format(refresh_tag="{refresh_tag}", provenance=provenance, bundle=bundle)


def write_template(path: Path = TEMPLATE) -> Path:
    """Write the offline template to ``path`` (only when its content changes)."""
    text = template_html()
    if not path.is_file() or path.read_text(encoding="utf8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf8")
    return path
