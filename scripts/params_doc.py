"""Write docs/params.md, the params reference, from the typed params dataclasses
(pipeline/params/<section>.py) and the values in params.yaml.

    python scripts/params_doc.py           # write docs/params.md
    python scripts/params_doc.py --check   # exit 1, naming the file, when it is stale

For every key: its type, its value in params.yaml (the default), what is allowed (the
``Literal`` choices of its annotation and the bounds of its ``in_range`` metadata) and
its help: the field's ``help`` metadata where it has one, else the comments beside and
above the field in its dataclass, else its comment in params.yaml. The rules between
keys are the messages of the ``ParamsError`` raised in each dataclass's
``__post_init__`` and in the config loader's cross-section checks. tests/test_docs.py
fails when the page is stale.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import io
import re
import sys
import tokenize
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
PAGE = REPO / "docs" / "params.md"
PARAMS = REPO / "params.yaml"
COMMAND = "python scripts/params_doc.py"

BOUND = {"gt": "greater than", "ge": "at least", "lt": "less than", "le": "at most"}


# ------------------------------------------------------------------- comments as help

def _comments(path: Path) -> dict[int, str]:
    """Line number -> the text of the comment on that line (without ``#``)."""
    found = {}
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.COMMENT:
            found[tok.start[0]] = tok.string.lstrip("#").strip()
    return found


def _field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comments in the dataclass source: the comment-only lines right
    above it, then the comment at its end."""
    path = Path(sys.modules[cls.__module__].__file__ or "")
    lines = path.read_text().splitlines()
    comments = _comments(path)
    tree = ast.parse(path.read_text())
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                and n.name == cls.__name__)
    out = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above = []
        line = stmt.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        beside = [comments[n] for n in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
                  if n in comments and not lines[n - 1].strip().startswith("#")]
        out[stmt.target.id] = " ".join(above + beside)
    return out


def _yaml_comments(path: Path) -> dict[str, str]:
    """Dotted key -> its comment in params.yaml: the one on its line, and the
    comment-only lines below it that are indented past the key (continuations)."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last = None
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped:
            continue
        indent = len(raw) - len(raw.lstrip())
        if stripped.startswith("#"):
            if last is not None and indent > last[1]:
                out[last[0]] = " ".join(filter(None, [out.get(last[0], ""),
                                                      stripped.lstrip("#").strip()]))
            continue
        match = re.match(r"([A-Za-z_][\w]*):(.*)$", stripped)
        if not match:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([k for _, k in stack] + [match.group(1)])
        stack.append((indent, match.group(1)))
        rest = match.group(2)
        comment = rest.split(" #", 1)[1].strip() if " #" in rest else ""
        if rest.strip().startswith("#"):
            comment = rest.strip().lstrip("#").strip()
        out[key] = comment
        last = (key, indent)
    return out


# ------------------------------------------------------------------- types and bounds

def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _code(value: Any) -> str:
    return f"`{value}`" if value != "" else '`""`'


def _type_text(tp: Any) -> str:
    """A field's annotation in words."""
    origin = get_origin(tp)
    if tp is Any:
        return "any"
    if origin is Literal:
        return "choice" if len(get_args(tp)) > 1 else _code(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return " or ".join(_type_text(arm) for arm in get_args(tp))
    if origin is tuple:
        item = get_args(tp)[0]
        if _is_dataclass_type(item):
            return f"list of {item.__name__} (below)"
        return f"list of {_type_text(item)}"
    if origin is dict:
        key_tp, value_tp = get_args(tp)
        return f"mapping {_type_text(key_tp)} → {_type_text(value_tp)}"
    if _is_dataclass_type(tp):
        return f"{tp.__name__} (below)"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(tp, str(tp))


def _choices(tp: Any) -> list[Any]:
    """Every Literal value anywhere in an annotation (not inside dataclasses)."""
    if get_origin(tp) is Literal:
        return list(get_args(tp))
    return [c for arm in get_args(tp) for c in _choices(arm)]


def _number(bound: float) -> str:
    """A bound as written: whole numbers in full (4294967295, not 4.29497e+09)."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _allowed(f: dataclasses.Field, tp: Any) -> str:
    parts = []
    choices = _choices(tp)
    if len(choices) > 1 or (choices and get_origin(tp) is not Literal):
        parts.append(", ".join(_code(c) for c in choices))
    bounds = f.metadata.get("range", {})
    numeric = " and ".join(f"{BOUND[k]} {_number(v)}" for k, v in bounds.items()
                           if v is not None)
    if numeric:
        parts.append(f"numbers {numeric}" if choices else numeric)
    return "; ".join(parts)


def _value_text(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if value == "":
        return _code("")
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("...").strip()
    return _code(text)


def _cell(text: str) -> str:
    """Text for a table cell or a list item: pipes escaped, and ``<`` outside code spans
    written as ``&lt;`` (else ``<seed>`` is an HTML tag that the page swallows)."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


# ------------------------------------------------------------------- rules between keys

def _placeholder(node: ast.expr) -> str:
    """A formatted value of an error message: ``{name}`` for a plain name or attribute
    (``{key}``, ``{train}``), else ``…``."""
    value = node.value if isinstance(node, ast.FormattedValue) else node
    if isinstance(value, ast.Name):
        return f"{{{value.id}}}"
    if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
        return f"{{{value.attr}}}" if value.value.id == "self" else f"{{{ast.unparse(value)}}}"
    return "…"


def _message(node: ast.expr) -> str:
    """An error message's text, with its formatted values as ``…``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else _placeholder(v)
                       for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _message(node.left) + _message(node.right)
    return "…"


def _raised(func: ast.AST) -> list[str]:
    """The messages of every ``raise ParamsError(...)`` in a function."""
    out = []
    for node in ast.walk(func):
        if (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                and getattr(node.exc.func, "id", "") == "ParamsError" and node.exc.args):
            text = " ".join(_message(node.exc.args[0]).split())
            if text not in out:
                out.append(text)
    return out


def _post_init_rules(cls: type) -> list[str]:
    path = Path(sys.modules[cls.__module__].__file__ or "")
    node = next(n for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    return [m for f in node.body if isinstance(f, ast.FunctionDef)
            and f.name == "__post_init__" for m in _raised(f)]


def _config_module() -> Path | None:
    """The config loader's source (pipeline/core/config.py, or wherever it moved)."""
    found = sorted(p for p in (REPO / "pipeline").rglob("config.py") if "params" not in p.parts)
    return found[0] if found else None


def _cross_rules() -> tuple[str, list[str]]:
    path = _config_module()
    if path is None:
        return "", []
    tree = ast.parse(path.read_text())
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)
             and n.name in ("check_members", "check_params")]
    return str(path.relative_to(REPO)), [m for f in funcs for m in _raised(f)]


# ------------------------------------------------------------------- the page

def _doc(cls: type) -> str:
    """A dataclass's docstring on one line, RST literals as markdown ones."""
    return " ".join((cls.__doc__ or "").split()).replace("``", "`")


def _section_class(section: str) -> type:
    module = importlib.import_module(f"pipeline.params.{section}")
    name = section.capitalize() + "Config"
    cls = getattr(module, name, None)
    if cls is None:
        raise SystemExit(f"pipeline/params/{section}.py has no dataclass {name}")
    return cls


@dataclasses.dataclass
class Row:
    key: str
    type: str
    default: str
    allowed: str
    help: str


def _rows(cls: type, values: Any, prefix: str, yaml_help: dict[str, str],
          nested: list[tuple[str, type]]) -> list[Row]:
    hints = get_type_hints(cls)
    comments = _field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}"
        tp = hints[f.name]
        if isinstance(values, dict) and f.name in values:
            value = values[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = dataclasses.MISSING
        help_text = (f.metadata.get("help") or comments.get(f.name)
                     or yaml_help.get(key.replace("[]", ""), ""))
        if _is_dataclass_type(tp):
            rows.append(Row(key, f"{tp.__name__}: the keys below", "", "",
                            help_text or _doc(tp)))
            rows += _rows(tp, value if isinstance(value, dict) else {}, key, yaml_help, nested)
            continue
        items = [a for a in (get_args(tp) if get_origin(tp) in (Union, types.UnionType)
                             else (tp,)) if get_origin(a) is tuple]
        for arm in items:
            item = get_args(arm)[0]
            if _is_dataclass_type(item):
                nested.append((f"{key}[]", item))
        rows.append(Row(key, _type_text(tp), _value_text(value), _allowed(f, tp), help_text))
    return rows


def _table(rows: list[Row], default_header: str) -> list[str]:
    out = [f"| key | type | {default_header} | allowed | help |", "|---|---|---|---|---|"]
    for r in rows:
        out.append("| " + " | ".join(_cell(c) for c in (
            _code(r.key), r.type, r.default, r.allowed, r.help)) + " |")
    return out


def render() -> str:
    """The page, as text."""
    params = yaml.safe_load(PARAMS.read_text())
    yaml_help = _yaml_comments(PARAMS)
    lines = [
        "# Params reference",
        "",
        f"<!-- generated by `{COMMAND}` from pipeline/params/*.py and params.yaml: "
        "do not edit by hand -->",
        "",
        "Every setting lives in `params.yaml`; this page lists each key with its type, its "
        "value in `params.yaml` (the default), what is allowed and what it does. Change one "
        "for a run with `dvc exp run -S section.key=value` ([experiments](experiments.md)). "
        "Every stage checks the whole file before it works: an unknown key names the closest "
        "valid ones, a wrong type or an out-of-range value names the key and what is allowed, "
        "and numbers in any YAML form (`1e-06`, which `-S` writes as a string) arrive as "
        "numbers. Each section is one frozen dataclass in `pipeline/params/<section>.py`; "
        "the stages that read a section list it under `params:` in `dvc.yaml` "
        "([what an edit reruns](architecture.md#what-an-edit-reruns)).",
        "",
        "Sections: " + ", ".join(f"[`{s}`](#{s})" for s in params) + ".",
        "",
    ]
    for section, values in params.items():
        cls = _section_class(section)
        nested: list[tuple[str, type]] = []
        rows = _rows(cls, values, section, yaml_help, nested)
        doc = _doc(cls)
        lines += [f"## {section}", "", f"`{cls.__module__}.{cls.__name__}`: {doc}", ""]
        lines += _table(rows, "default")
        rules = [(cls.__name__, r) for r in _post_init_rules(cls)]
        for key, item in nested:
            item_rows = _rows(item, {}, key, yaml_help, [])
            item_doc = _doc(item)
            lines += ["", f"Each item of `{key.removesuffix('[]')}` ({item.__name__}): "
                      f"{item_doc}", ""]
            lines += _table(item_rows, "default when left out")
            rules += [(item.__name__, r) for r in _post_init_rules(item)]
        for tp in {t for t in get_type_hints(cls).values() if _is_dataclass_type(t)}:
            rules += [(tp.__name__, r) for r in _post_init_rules(tp)]
        if rules:
            lines += ["", "Checked between keys (each message as the check raises it, "
                          "`{name}` or `…` standing for a value):", ""]
            lines += [f"- `{owner}`: {_cell(rule)}" for owner, rule in rules]
        lines.append("")
    where, cross = _cross_rules()
    if cross:
        lines += ["## Across sections", "",
                  f"Checked by `{where}` once every section is read:", ""]
        lines += [f"- {_cell(rule)}" for rule in cross]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when docs/params.md differs from what this writes")
    args = parser.parse_args()
    text = render()
    name = PAGE.relative_to(REPO)
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{name} is stale: run {COMMAND}", file=sys.stderr)
            sys.exit(1)
        print(f"{name} is up to date")
        return
    PAGE.parent.mkdir(exist_ok=True)
    PAGE.write_text(text)
    print(f"wrote {name}")


if __name__ == "__main__":
    main()
