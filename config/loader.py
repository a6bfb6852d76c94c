"""Load ``kith.yaml`` and ``tiers.yaml`` into one frozen ``Config``.

Every problem is raised as a ``ConfigError`` naming the file, the 1-based line and the dotted key
(``tiers.free.models[1]``), found by walking the composed YAML node tree along the error's path.
"""
from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError
from .models import Config, ModelSpec, Settings, TiersConfig

__all__ = ["SHIPPED_DIR", "SHIPPED_SETTINGS", "SHIPPED_TIERS", "Loc", "Problem", "load_config"]

SHIPPED_DIR = Path(__file__).resolve().parent
SHIPPED_SETTINGS = SHIPPED_DIR / "kith.yaml"
SHIPPED_TIERS = SHIPPED_DIR / "tiers.yaml"

Loc = tuple[str | int, ...]  # a path into the document: str keys and int sequence indices
Problem = tuple[Loc, str]  # (where, why)


def load_config(path: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and cross-check the configuration; return a frozen ``Config``.

    kith.yaml: ``path``, else ``$KITH_CONFIG``, else the shipped ``config/kith.yaml``. tiers.yaml:
    ``tiers_file:`` (relative to kith.yaml's folder), else ``tiers.yaml`` beside kith.yaml, else the
    shipped one. ``$KITH_MODEL`` replaces ``default_model``; a litellm string not among the aliases
    (``openai/gpt-4o-mini``) is registered as an alias of the same name. ``env`` defaults to
    ``os.environ``. An empty file means all defaults.

    Raises ``ConfigError`` (``.file``, ``.line``, ``.key``) for a missing file, bad YAML, a duplicate
    or unknown key, a wrong type or value, and an alias or tier that is not defined. Problems with
    ``$KITH_MODEL`` have ``file=None`` and ``key="KITH_MODEL"``.
    """
    env = os.environ if env is None else env
    settings_path = Path(path if path is not None else env.get("KITH_CONFIG") or SHIPPED_SETTINGS).expanduser()
    data, root = _read(settings_path)
    settings = _validate(Settings, data, root, settings_path)
    tiers_path = _tiers_path(settings, settings_path, root)
    tdata, troot = _read(tiers_path)
    tiers = _validate(TiersConfig, tdata, troot, tiers_path)
    settings = _override_model(settings, (env.get("KITH_MODEL") or "").strip())
    _check_tier_aliases(tiers, settings, settings_path, troot, tiers_path)
    return Config(settings=settings, tiers=tiers, settings_file=settings_path.absolute(), tiers_file=tiers_path.absolute())


# ---------------------------------------------------------------- reading


def _read(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """The document as plain data (``{}`` if empty) and its node tree (None if empty)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    loader = yaml.SafeLoader(text)  # safe: plain YAML types only, no arbitrary tags
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
        at, started = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
        if started is not None and (at is None or "end of stream" in (problem or "")):
            at = started  # an unclosed quote or bracket: where it was opened, not the end of the file
        line = at.line + 1 if at is not None else None
        reason = problem or str(exc)
        if context and started is not None:
            reason += f" ({context} at line {started.line + 1})"
        raise ConfigError(f"not valid YAML: {reason}", file=str(path), line=line, key=_key_near(text, line)) from None
    finally:
        loader.dispose()
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping of keys, not a {type(data).__name__}", file=str(path), line=root.start_mark.line + 1)
    _check_duplicates(root, "", path, set())
    return data, root


_KEY_LINE = re.compile(r"^(\s*)(?:-\s+)?([^\s#'\"{\[][^:#]*?|'[^']*'|\"[^\"]*\")\s*:(?:\s+(.*))?$")


def _key_near(text: str, line: int | None) -> str | None:
    """Best-effort dotted key at or before ``line`` of a document that does not parse (by indentation)."""
    if not line:
        return None
    parents: list[tuple[int, str]] = []
    key = None
    for raw in text.splitlines()[:line]:
        m = _KEY_LINE.match(raw)
        if not m:
            continue
        indent, name, value = len(m[1]), m[2].strip("'\""), (m[3] or "").split("#")[0].strip()
        while parents and parents[-1][0] >= indent:
            parents.pop()
        key = ".".join([p for _, p in parents] + [name])
        if not value:
            parents.append((indent, name))
    return key


def _check_duplicates(node: yaml.Node, key: str, path: Path, seen: set[int]) -> None:
    """PyYAML keeps the last of two equal keys silently; a config typo deserves an error."""
    if id(node) in seen:  # anchors/aliases share nodes (and may be recursive)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for k, v in node.value:
            name = k.value if isinstance(k, yaml.ScalarNode) else "?"
            if name in first and name not in ("<<", "?"):
                raise ConfigError(f"duplicate key (first at line {first[name]})", file=str(path),
                                  line=k.start_mark.line + 1, key=_join(key, name))
            first[name] = k.start_mark.line + 1
            _check_duplicates(v, _join(key, name), path, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, f"{key}[{i}]", path, seen)


# ---------------------------------------------------------------- locating


def _where(root: yaml.Node | None, loc: Loc) -> tuple[int | None, str]:
    """(line, dotted key) of ``loc``: the line of the deepest part of ``loc`` present in the YAML."""
    node, line, key = root, (root.start_mark.line + 1 if root is not None else None), ""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in reversed(node.value) if isinstance(kv[0], yaml.ScalarNode) and kv[0].value == str(part)), None)
            if match is not None:
                line, node, key = match[0].start_mark.line + 1, match[1], _join(key, str(part))
                continue
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line, key = node.start_mark.line + 1, f"{key}[{part}]"
            continue
        node = None  # past the YAML: a missing key, or a pydantic marker such as '[key]'
        if isinstance(part, int):
            key = f"{key}[{part}]"
        elif "[" not in part:
            key = _join(key, part)
    return line, key


def _join(a: str, b: str | None) -> str:
    return f"{a}.{b}" if a and b else a or b or ""


def _located(problems: list[Problem], root: yaml.Node | None, path: Path) -> ConfigError:
    """One ConfigError for the earliest problem in the file, counting the others."""
    placed = sorted(((*_where(root, loc), why) for loc, why in problems), key=lambda p: (p[0] is None, p[0] or 0))
    line, key, why = placed[0]
    if len(placed) > 1:
        why += f" (and {len(placed) - 1} more error{'s' if len(placed) > 2 else ''})"
    return ConfigError(why, file=str(path), line=line, key=key or None)


# ---------------------------------------------------------------- validating


def _validate(model: type[BaseModel], data: dict[str, Any], root: yaml.Node | None, path: Path) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(model, err) for err in exc.errors()]
        if any(not loc for loc, _ in problems):  # a model validator: find the offending key ourselves
            problems = _reference_problems(model, data) or problems
        raise _located(problems, root, path) from None


def _problem(model: type[BaseModel], err: Any) -> Problem:
    loc, kind, why, given = tuple(err["loc"]), err["type"], err["msg"].removeprefix("Value error, "), err.get("input")
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, 1)
        why = "unknown key" + (f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(allowed)}" if allowed else "")
    elif kind == "missing":
        why = "required key is missing"
    elif isinstance(given, dict) and (m := re.match(r"(.+?): (.*)", why)) and m[1] in given:
        loc, why = (*loc, m[1]), f"{m[2]} (got {given[m[1]]!r})"  # a per-entry check of a mapping
    elif not isinstance(given, (dict, list, tuple)):
        why += f" (got {given!r})"
    return loc, why


def _fields_at(tp: Any, loc: Loc) -> list[str]:
    """Field names of the model reached by following ``loc`` through the model's type hints."""
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return []
            tp = field.annotation
        elif get_origin(tp) in (dict, tuple):
            tp = get_args(tp)[-1 if get_origin(tp) is dict else 0]
        else:
            return []
    tp = _unwrap(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _unwrap(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _reference_problems(model: type[BaseModel], data: dict[str, Any]) -> list[Problem]:
    """Re-do the model validators' cross-reference checks on the raw data, with paths.

    Only called when every field validated, so the shapes are known to be right.
    """
    def default(name: str) -> Any:
        return model.model_fields[name].get_default(call_default_factory=True)

    def missing(key: str, value: Any, what: str, names: Any) -> Problem:
        listing = f"({', '.join(map(str, names))})"
        if key in data:
            return (key,), f"{value!r} is not {what} {listing}"
        container = key.split("_")[1] + "s"  # default_model -> models, default_tier -> tiers
        return ((container,) if container in data else ()), f"{key} is {value!r} (the default), which is not {what} {listing}; set {key}"

    out: list[Problem] = []
    if model is Settings:
        models = data.get("models", default("models"))
        if (value := data.get("default_model", default("default_model"))) not in models:
            out.append(missing("default_model", value, "an alias in models:", models))
        for alias, spec in models.items():
            fallbacks = spec.get("fallbacks") or () if isinstance(spec, dict) else spec.fallbacks
            out += [(("models", alias, "fallbacks", i), f"unknown model alias {fb!r}; known: {', '.join(models)}")
                     for i, fb in enumerate(fallbacks) if fb not in models]
    elif model is TiersConfig:
        tiers = data.get("tiers", default("tiers"))
        if (value := data.get("default_tier", default("default_tier"))) not in tiers:
            out.append(missing("default_tier", value, "a tier in tiers:", tiers))
        out += [(("plans", name, "tier"), f"unknown tier {plan['tier']!r}; tiers: {', '.join(tiers)}")
                for name, plan in (data.get("plans") or {}).items() if plan["tier"] not in tiers]
    return out


# ---------------------------------------------------------------- resolving and cross-file checks


def _tiers_path(settings: Settings, settings_path: Path, root: yaml.Node | None) -> Path:
    if settings.tiers_file:
        path = Path(settings.tiers_file).expanduser()
        path = path if path.is_absolute() else settings_path.parent / path
        if not path.is_file():
            line, _ = _where(root, ("tiers_file",))
            raise ConfigError(f"tiers file not found: {path}", file=str(settings_path), line=line, key="tiers_file")
        return path
    beside = settings_path.parent / "tiers.yaml"
    return beside if beside.is_file() else SHIPPED_TIERS


def _override_model(settings: Settings, value: str) -> Settings:
    """Apply ``$KITH_MODEL``: an existing alias, or a litellm string registered as its own alias."""
    if not value:
        return settings
    models = dict(settings.models)
    if value not in models:
        if "/" not in value:
            raise ConfigError(f"{value!r} is neither an alias in models: ({', '.join(models)}) nor a litellm model string "
                              "such as 'openai/gpt-4o-mini'", key="KITH_MODEL")
        models[value] = ModelSpec(model=value)
    return settings.model_copy(update={"models": models, "default_model": value})


def _check_tier_aliases(tiers: TiersConfig, settings: Settings, settings_path: Path,
                        root: yaml.Node | None, path: Path) -> None:
    """Every model alias named in tiers.yaml (except ``"*"``) must be defined in kith.yaml."""
    known = settings.models

    def why(alias: str) -> str:
        return f"unknown model alias {alias!r}; {settings_path.name} defines: {', '.join(known)}"

    problems: list[Problem] = []
    for name, tier in tiers.tiers.items():
        problems += [(("tiers", name, "models", i), why(a)) for i, a in enumerate(tier.models) if a != "*" and a not in known]
        problems += [(("tiers", name, "quotas", "requests_per_day", a), why(a))
                     for a in tier.quotas.requests_per_day if a != "*" and a not in known]
        if tier.fallback_model is not None and tier.fallback_model not in known:
            problems.append((("tiers", name, "fallback_model"), why(tier.fallback_model)))
        if tier.image_model is not None and tier.image_model not in settings.image_models:
            problems.append((("tiers", name, "image_model"), f"unknown image model alias {tier.image_model!r}; "
                             f"{settings_path.name} image_models: defines: {', '.join(settings.image_models) or 'none'}"))
    if problems:
        raise _located(problems, root, path)
