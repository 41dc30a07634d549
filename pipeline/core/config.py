"""Loading params.yaml into typed, frozen, validated objects: one dataclass per section,
each in its own module under pipeline/params/.

Stages call :func:`load_sections` once at their boundary and pass the objects down.
Every key must be present in params.yaml (it is the single source of settings); unknown
keys, wrong types and out-of-range values raise :class:`ParamsError` naming the key.

:func:`load_sections` validates the whole file, not only the sections a stage reads
(:func:`check_params`): the first stage that runs stops a bad value anywhere, before any
heavy work (a bad ``train.lr`` fails ``prepare`` on a fresh run, not ``train`` after
the cache is built). The other sections' schemas and the backbone checks are imported by
name, so they are no DVC dependency of a stage that does not read them: they can stop
the stage, never change what it writes.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from pipeline.core.errors import ParamsError, PipelineError

PARAMS_FILE = Path("params.yaml")

# Each section's schema lives in its own module (pipeline/params/<section>.py), imported
# here only when loaded: a stage depends on the schemas of the sections it reads, which
# it imports itself (tests/test_dvc_yaml.py checks that), not on all of them.
SECTIONS: dict[str, str] = {
    "base": "BaseConfig",
    "data": "DataConfig",
    "embed": "EmbedConfig",
    "clean": "CleanConfig",
    "split": "SplitConfig",
    "cache": "CacheConfig",
    "model": "ModelConfig",
    "train": "TrainConfig",
    "evaluate": "EvaluateConfig",
    "ensemble": "EnsembleConfig",
    "members": "MembersConfig",
}


def section_class(name: str) -> type:
    """The dataclass of params section ``name``."""
    return getattr(importlib.import_module(f"pipeline.params.{name}"), SECTIONS[name])


# ----------------------------------------------------------------------------- loading


def _unknown_key(key: str, valid: Sequence[str]) -> ParamsError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=3, cutoff=0.5)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f"; did you mean {', '.join(repr(prefix + c) for c in close)}?" if close else "."
    return ParamsError(
        f"unknown key {key!r}{hint} Valid keys here: {', '.join(prefix + v for v in valid)}")


def _to_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ParamsError(f"{key} = {value!r}: expected true or false")


def _to_int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ParamsError(f"{key} = {value!r}: expected an integer")


def _to_float(value: Any, key: str) -> float:
    # `dvc exp run -S train.lr=0.000001` writes 1e-06, which PyYAML reads as a string.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float (about 1.8e308)
            number = math.inf
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ParamsError(f"{key} = {value!r}: expected a number") from None
    else:
        raise ParamsError(f"{key} = {value!r}: expected a number")
    if not math.isfinite(number):
        raise ParamsError(f"{key} = {value!r}: expected a finite number")
    return number


def _to_str(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    raise ParamsError(f"{key} = {value!r}: expected a string")


# _convert's scalar types: YAML value, key -> the value, or ParamsError naming the key
_SCALARS: dict[Any, Callable[[Any, str], Any]] = {
    bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert one YAML value to the annotated type, or raise naming the key."""
    if tp is Any:  # checked later against the section it changes (section members)
        return value
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        raise ParamsError(f"{key} = {value!r} is not allowed; choose one of: "
                          f"{', '.join(map(str, choices))}")
    if origin in (Union, types.UnionType):
        errors = []
        for arm in get_args(tp):
            try:
                return _convert(value, arm, key)
            except ParamsError as exc:
                # a list or number is no misspelt "auto": name only the other arms' faults
                if not (get_origin(arm) is Literal and not isinstance(value, str)):
                    errors.append(str(exc))
        raise ParamsError(" / ".join(errors) or f"{key} = {value!r}: "
                          f"choose one of: {', '.join(map(str, get_args(tp)))}")
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        if not isinstance(value, list):
            raise ParamsError(f"{key} = {value!r}: expected a list")
        return tuple(_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        key_tp, value_tp = get_args(tp)
        if not isinstance(value, Mapping):
            raise ParamsError(f"{key} = {value!r}: expected a mapping of names to values")
        return {_convert(k, key_tp, key): _convert(v, value_tp, f"{key}.{k}")
                for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp in _SCALARS:
        return _SCALARS[tp](value, key)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module


def _check_range(value: float, bounds: Mapping[str, float | None], key: str) -> None:
    tests = {
        "gt": (lambda v, b: v > b, "greater than"),
        "ge": (lambda v, b: v >= b, "at least"),
        "lt": (lambda v, b: v < b, "less than"),
        "le": (lambda v, b: v <= b, "at most"),
    }
    for name, bound in bounds.items():
        if bound is not None and not tests[name][0](value, bound):
            allowed = " and ".join(f"{tests[n][1]} {_number(b)}" for n, b in bounds.items()
                                   if b is not None)
            raise ParamsError(f"{key} = {value!r} is out of range: it must be {allowed}")


def _number(bound: float) -> str:
    """A bound as written: whole numbers in full (4294967295, not 4.29497e+09)."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _check_ranges(value: Any, bounds: Mapping[str, float | None], key: str) -> None:
    """``value`` and, for a list or mapping, each number in it against ``bounds``
    ("auto" and other words have no range)."""
    if isinstance(value, bool) or isinstance(value, str):
        return
    if isinstance(value, tuple):
        for i, item in enumerate(value):
            _check_ranges(item, bounds, f"{key}[{i}]")
    elif isinstance(value, Mapping):
        for name, item in value.items():
            _check_ranges(item, bounds, f"{key}.{name}")
    elif isinstance(value, (int, float)):
        _check_range(value, bounds, key)


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, validating every key."""
    if not isinstance(data, Mapping):
        raise ParamsError(f"{prefix} must be a mapping of keys to values, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise _unknown_key(f"{prefix}.{key}", list(fields))
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name not in data:
            if f.default is not dataclasses.MISSING:  # optional keys (phases only)
                kwargs[name] = f.default
                continue
            if f.default_factory is not dataclasses.MISSING:
                kwargs[name] = f.default_factory()
                continue
            raise ParamsError(f"missing key {key!r} in params.yaml")
        kwargs[name] = _field_value(f, hints[name], data[name], key)
    return _checked(lambda: cls(**kwargs), prefix)


def _field_value(f: dataclasses.Field, tp: Any, value: Any, key: str) -> Any:
    """One field's YAML value converted to its type and checked against its range."""
    value = _convert(value, tp, key)
    if "range" in f.metadata:
        _check_ranges(value, f.metadata["range"], key)
    return value


def _checked(make: Any, prefix: str, sep: str = ".") -> Any:
    """``make()``, a dataclass whose ``__post_init__`` checks rules between keys; its
    error names where the keys are (``prefix`` + ``sep``) when it does not."""
    try:
        return make()
    except ParamsError as exc:
        if str(exc).startswith(prefix):
            raise
        raise ParamsError(f"{prefix}{sep}{exc}") from None


def with_changes(config: Any, changes: Mapping[str, Any], prefix: str) -> Any:
    """Section object ``config`` with the keys in ``changes`` replaced, each converted and
    checked as in params.yaml and the rules between keys checked again (an ensemble
    member's settings, section ``members``); errors name the keys under ``prefix``."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = get_type_hints(type(config))
    kwargs = {}
    for name, value in changes.items():
        if name not in fields:
            raise _unknown_key(f"{prefix}.{name}", list(fields))
        kwargs[name] = _field_value(fields[name], hints[name], value, f"{prefix}.{name}")
    return _checked(lambda: dataclasses.replace(config, **kwargs), prefix, ": ")


def parse_sections(params: Mapping[str, Any], *names: str) -> tuple[Any, ...]:
    """Validate the named sections of an already-loaded params mapping."""
    for section in params:
        if section not in SECTIONS:
            raise _unknown_key(str(section), list(SECTIONS))
    out = []
    for name in names:
        if name not in params:
            raise ParamsError(f"params.yaml has no section {name!r}")
        out.append(_build(section_class(name), params[name], name))
    return tuple(out)


def check_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate every section and the rules between keys; return the sections by name.

    Beyond each section's own rules (fractions summing to 1, ascending cutoffs, ...):
    ``model.name`` and ``embed.model`` must be timm or torchvision models, and their
    weights a known tag or name, or a file that loads as a state dict (read once here),
    unless they name a text encoder (MiniLM, a folder, a hub id), which loads later.
    Whether an integer ``unfreeze`` fits the model's layer groups needs the model built
    and is checked when train starts.
    """
    sections = dict(zip(SECTIONS, parse_sections(params, *SECTIONS)))
    # imported by name: torch and timm, only for these checks (see the module docstring)
    backbones = importlib.import_module("pipeline.finetuning.backbones")
    textmodel = importlib.import_module("pipeline.modality.text.model")
    if not textmodel.names_encoder(sections["model"].name):  # encoders are checked on load
        backbones.check_model_config(sections["model"], weights_file=True)
    embed = sections["embed"]
    if not textmodel.names_encoder(embed.model):
        backbones.check_model_config(backbones.BackboneSpec(embed.model, embed.weights),
                                     section="embed", weights_file=True)
    check_members(sections)
    for seed, change in sections["members"].model.items():  # a member's own backbone
        key = f"members.model.{seed}"
        if {"name", "weights"} & set(change):
            try:
                backbones.check_model_config(with_changes(sections["model"], change, key),
                                             weights_file=True)
            except PipelineError as exc:
                raise type(exc)(f"{key}: {exc}") from None
    return sections


def check_members(sections: Mapping[str, Any]) -> None:
    """Each member list (ensemble.seeds, split.folds) and its combining stage
    (ensemble.combine) come together: dvc.yaml makes a stage per list item but the one
    stage that combines a list only from ensemble.combine. A member's own settings
    (section members) name one of ensemble.seeds and valid train / model keys."""
    ensemble, split, cache = sections["ensemble"], sections["split"], sections["cache"]
    for kind, key, members in (("seeds", "ensemble.seeds", ensemble.seeds),
                               ("folds", "split.folds", split.folds)):
        if bool(members) != (kind in ensemble.combine):
            have, lack = ((f"{key} = {list(members)}", f"ensemble.combine lacks {kind!r}")
                          if members else (f"ensemble.combine names {kind!r}", f"{key} is []"))
            raise ParamsError(f"{have} but {lack}: set both, e.g. dvc exp run -S "
                              f"'{key}=[0,1,2]' -S 'ensemble.combine=[{kind}]', or neither")
    members = sections["members"]
    for section, changes in (("train", members.train), ("model", members.model)):
        for seed, change in changes.items():
            key = f"members.{section}.{seed}"
            if seed not in ensemble.seeds:
                raise ParamsError(f"{key}: {seed} is no seed in ensemble.seeds = "
                                  f"{list(ensemble.seeds)}")
            if section == "train" and "seed" in change:
                raise ParamsError(f"{key}.seed: a member's train.seed is its item of "
                                  f"ensemble.seeds ({seed}); leave it out")
            with_changes(sections[section], change, key)
    if split.folds and cache.views:
        raise ParamsError(f"split.folds = {list(split.folds)} trains on val images too, and "
                          f"cache.views = {cache.views} has augmented views of train only: "
                          f"set cache.views: 0 for cross-validation")


# An alias (``*name``) stands for its anchor's whole value; nested aliases multiply
# ("billion laughs": a few lines that stand for 10**9 values). The loaded object shares
# them, but every copy of it (a message quoting the value, the resolved params saved
# with each model) expands them: refuse before that.
ALIAS_VALUES = 1000  # values (scalars, lists, mappings) one alias may stand for
FILE_VALUES = 100_000  # values of the whole file, its aliases expanded


def read_params(path: Path) -> Any:
    """``path`` (params.yaml) parsed as plain data, as ``yaml.safe_load`` does, after
    refusing what DVC refuses and what would exhaust memory when expanded: a key given
    twice in one mapping (PyYAML keeps the last, DVC stops), an alias of itself, an alias
    that stands for more than :data:`ALIAS_VALUES` values, more than :data:`FILE_VALUES`
    values in all. Each error is one line naming the key."""
    try:
        with path.open(encoding="utf-8") as fh:
            loader = yaml.SafeLoader(fh)
            try:
                node = loader.get_single_node()
                if node is None:
                    return {}
                _check_nodes(node, path)
                return loader.construct_document(node)
            finally:
                loader.dispose()
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {' '.join(str(exc).split())}"
                          ) from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
                          ) from None
    except RecursionError:
        raise ParamsError(f"{path} nests lists or mappings too deeply to read") from None
    except ValueError as exc:  # an integer of more than 4300 digits (CPython's limit)
        raise ParamsError(f"{path}: a value cannot be read: {str(exc).split(';')[0]}"
                          ) from None


def _key_text(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else f"<{node.tag}>"


def _check_nodes(root: yaml.Node, path: Path) -> None:
    """Raise ParamsError for a duplicate key, a recursive alias or aliases that expand
    beyond the limits (see :func:`read_params`); ``root``: the composed document."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, where: str, open_: frozenset[int]) -> int:
        """Values ``node`` stands for, aliases expanded (each node counted once)."""
        if id(node) in open_:
            raise ParamsError(f"{path}: {where or 'the document'} is an alias inside its "
                              f"own anchor (a value that contains itself): write it out")
        if id(node) not in sizes:
            inner = open_ | {id(node)}
            children: list[yaml.Node] = (
                [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else list(node.value) if isinstance(node, yaml.SequenceNode) else [])
            sizes[id(node)] = 1 + sum(size(child, where, inner) for child in children)
        return sizes[id(node)]

    seen: set[int] = set()

    def walk(node: yaml.Node, where: str) -> None:
        if id(node) in seen:  # a second occurrence: an alias
            values = size(node, where, frozenset())
            if values > ALIAS_VALUES:
                raise ParamsError(f"{path}: {where} is an alias that stands for {values} "
                                  f"values (more than {ALIAS_VALUES}): write them out")
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{where}[{i}]")
        elif isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                name = _key_text(key)
                here = f"{where}.{name}" if where else name
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    line = key.start_mark.line + 1
                    if (key.tag, key.value) in lines:
                        raise ParamsError(
                            f"{path}: {here} is given twice (lines "
                            f"{lines[key.tag, key.value]} and {line}); DVC refuses duplicate "
                            f"keys: keep one")
                    lines[key.tag, key.value] = line
                walk(key, here)
                walk(value, here)

    walk(root, "")
    total = size(root, "", frozenset())
    if total > FILE_VALUES:
        top = ([(size(v, _key_text(k), frozenset()), _key_text(k)) for k, v in root.value]
               if isinstance(root, yaml.MappingNode) else [(total, "the document")])
        raise ParamsError(f"{path}: {max(top)[1]} stands for {max(top)[0]} values with its "
                          f"aliases expanded (the file may hold {FILE_VALUES}): write "
                          f"them out")


def load_sections(*names: str, path: Path = PARAMS_FILE) -> tuple[Any, ...]:
    """Read and validate all of params.yaml once (:func:`check_params`) and return the
    named sections as typed, frozen objects.

    The names a stage passes here must equal the ``params`` list of its stage in
    dvc.yaml (tests/test_dvc_yaml.py checks it), so DVC reruns it when they change.
    """
    if not path.exists():
        raise ParamsError(f"{path} not found: run stages from the project root")
    params = read_params(path)
    if not isinstance(params, Mapping):
        raise ParamsError(f"{path} must be a mapping of sections, got {params!r}")
    sections = check_params(params)
    return tuple(sections[name] for name in names)


def as_dict(config: Any) -> dict[str, Any]:
    """A config object as plain data (for saving with models and metrics)."""
    return dataclasses.asdict(config)
