"""Typer options generated from a stage config (:mod:`implicit_it.config`): one source for names, defaults and help.

``@stage_options(RankConfig)`` on a command whose signature has ``cfg: RankConfig`` replaces that parameter with

* one option per field: the field's name in kebab case (``max_length`` -> ``--max-length``), its default and its
  description as help; a list is one comma-separated value (:func:`implicit_it.lists.parse_list`), an optional value
  takes ``none``; dict fields and nested blocks are set with ``--set`` or ``--config`` only;
* ``--config FILE``: a YAML mapping of the same fields (the stage's block of an experiment config, e.g. ``run.rank``);
* ``--set KEY=VALUE`` (repeatable): one field, the value read as YAML.

Precedence: the config's defaults < ``--config`` < the options given < ``--set``. The command receives the validated
model; an unknown key or a bad value is one error naming the field.
"""

from __future__ import annotations

import functools
import inspect
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, TypeVar, Union, get_args, get_origin

import typer
import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from implicit_it.errors import ConfigError
from implicit_it.lists import parse_list

F = TypeVar("F", bound=Callable[..., Any])
PREFIX = "cfg__"  # python names of the generated parameters (the options themselves are named after the fields)
NONE_WORDS = ("none", "null")
GIVEN = ("COMMANDLINE", "ENVIRONMENT")  # click's ParameterSource names (typer vendors its own click: compared by name)


def kebab(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class FieldOption:
    """How one config field appears on the command line."""

    name: str
    type: Any  # what typer parses (str for lists, literals and optional values)
    default: Any  # the CLI spelling of the field's default
    convert: Callable[[Any], Any]  # CLI value -> what the model validates
    is_flag: bool = False


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (it, False)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def field_option(name: str, field: FieldInfo) -> FieldOption | None:
    """The option of one field, or None for a field only ``--set``/``--config`` can give (a mapping)."""
    annotation, optional = _optional(field.annotation)
    default = field.get_default(call_default_factory=True)
    origin = get_origin(annotation)
    if origin is dict or annotation is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return None  # a mapping or a nested block: --set KEY={...} or --config
    if origin is list:

        def convert_list(raw: Any) -> Any:
            return None if optional and str(raw).strip().lower() in NONE_WORDS else parse_list(raw, what=kebab(name))

        shown = None if default is None else ",".join(str(x) for x in default)
        return FieldOption(name, Optional[str], shown, convert_list)
    if annotation is bool and not optional:
        return FieldOption(name, bool, default, bool, is_flag=True)
    if optional or origin is Literal:

        def convert_text(raw: Any) -> Any:
            return None if optional and str(raw).strip().lower() in NONE_WORDS else raw

        return FieldOption(name, Optional[str], None if default is None else str(default), convert_text)
    if annotation in (int, float, str):
        return FieldOption(name, annotation, default, lambda raw: raw)
    return FieldOption(name, str, str(default), lambda raw: raw)


def field_options(model: type[BaseModel]) -> dict[str, FieldOption]:
    return {name: opt for name, field in model.model_fields.items() if (opt := field_option(name, field)) is not None}


def _help(field: FieldInfo, option: FieldOption) -> str:
    text = field.description or ""
    if option.type == Optional[str] and _optional(field.annotation)[1] and "none" not in text:
        text += " ('none': unset)"
    return text


def _set_value(model: type[BaseModel], item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. max_length=512")
    if key not in model.model_fields:
        raise ConfigError(f"--set {key}: unknown key (not a field of {model.__name__}); choose from {', '.join(model.model_fields)}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    opt = field_option(key, model.model_fields[key])
    if isinstance(parsed, str) and opt is not None and get_origin(_optional(model.model_fields[key].annotation)[0]) is list:
        parsed = opt.convert(parsed)
    return key, parsed


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a stage config must be a YAML mapping, got {type(data).__name__}")
    return data


def build_config(
    model: type[BaseModel], *, file: Path | None = None, given: dict[str, Any] | None = None, sets: list[str] | tuple[str, ...] = ()
) -> Any:
    """The stage config from a YAML file, then the options given, then ``--set`` items; errors name the field."""
    data: dict[str, Any] = _read_file(file) if file is not None else {}
    source = str(file) if file is not None else "options"
    unknown = [k for k in data if k not in model.model_fields]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} (not fields of {model.__name__}); choose from {', '.join(model.model_fields)}"
        )
    data.update(given or {})
    data.update(_set_value(model, item) for item in sets)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            flag = kebab(str(e["loc"][0])) if e["loc"] else ""
            msg = "unknown key (not a config field)" if e["type"] == "extra_forbidden" else e["msg"]
            got = f" (got {e['input']!r})" if e["type"] not in ("extra_forbidden", "missing") and "input" in e else ""
            problems.append(f"{flag} ({where}): {msg}{got}" if flag else f"{where}: {msg}{got}")
        raise ConfigError("; ".join(problems)) from None


def _other_params(func: Callable[..., Any], param: str) -> tuple[inspect.Signature, dict[str, Any], list[inspect.Parameter]]:
    """``func``'s signature, type hints and its parameters other than ``param`` (keyword-only), which the generated
    options join."""
    sig = inspect.signature(func)
    hints = typing.get_type_hints(func)
    if param not in sig.parameters:
        raise TypeError(f"{func.__name__} has no parameter {param!r}")
    params = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
        for p in sig.parameters.values()
        if p.name != param
    ]
    return sig, hints, params


def _with_signature(wrapper: Any, sig: inspect.Signature, hints: dict[str, Any], params: list[inspect.Parameter]) -> Any:
    """``wrapper`` as typer sees it: the command's own parameters and the generated options."""
    wrapper.__signature__ = sig.replace(parameters=params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | ({"return": hints["return"]} if "return" in hints else {})
    return wrapper


def stage_options(model: type[BaseModel], *, param: str = "cfg", short: dict[str, str] | None = None) -> Callable[[F], F]:
    """Replace the command's ``param`` (a ``model`` instance) by options generated from the model's fields.

    ``short``: extra flags per field (``{"data": "-d"}``)."""
    short = short or {}

    def decorate(func: F) -> F:
        sig, hints, params = _other_params(func, param)
        generated: dict[str, FieldOption] = {}
        for name, opt in field_options(model).items():
            flags = [f"{kebab(name)}/--no-{name.replace('_', '-')}"] if opt.is_flag else [kebab(name)]
            flags += [short[name]] if name in short else []
            info = typer.Option(opt.default, *flags, help=_help(model.model_fields[name], opt), show_default=True)
            generated[PREFIX + name] = opt
            params.append(inspect.Parameter(PREFIX + name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=opt.type))
        params.append(
            inspect.Parameter(
                PREFIX + "config_file",
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(
                    None, "--config", help=f"YAML with fields of this stage ({model.__name__}); options given override it."
                ),
                annotation=Optional[Path],
            )
        )
        params.append(
            inspect.Parameter(
                PREFIX + "sets",
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option([], "--set", help="KEY=VALUE: set one field (value read as YAML); repeatable, applied last."),
                annotation=list[str],
            )
        )

        params.append(inspect.Parameter(PREFIX + "ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = kwargs.pop(PREFIX + "ctx", None)
            given: dict[str, Any] = {}
            for pname, opt in generated.items():
                raw = kwargs.pop(pname, None)
                source = ctx.get_parameter_source(pname) if ctx is not None else None
                explicit = ctx is None or getattr(source, "name", None) in GIVEN  # called directly (not from the CLI): every value counts
                if explicit and raw is not None:
                    given[opt.name] = opt.convert(raw)
            cfg = build_config(
                model, file=kwargs.pop(PREFIX + "config_file", None), given=given, sets=kwargs.pop(PREFIX + "sets", []) or []
            )
            return func(*args, **{param: cfg}, **kwargs)

        return _with_signature(wrapper, sig, hints, params)

    return decorate


def block_options(blocks: dict[str, type[BaseModel]], *, param: str = "overrides", exclude: tuple[str, ...] = ()) -> Callable[[F], F]:
    """For a command that reads a whole experiment config (``iit train``, ``iit sweep``): one option per field of each
    named block (``{"training": TrainingConfig}`` -> ``--learning-rate``, ``--epochs``, ...), named, typed and explained
    as the field is. An option given becomes the override ``block.field=VALUE`` (what ``--set`` does), so the command's
    ``param`` receives a list of overrides for ``load_config``; an option not given leaves the config's value.
    ``exclude``: fields the command names otherwise (``iit train --variant`` picks among ``training.variants``)."""

    def decorate(func: F) -> F:
        sig, hints, params = _other_params(func, param)
        taken = {p.name for p in params}
        generated: dict[str, tuple[str, FieldOption]] = {}
        for block, model in blocks.items():
            for name, opt in field_options(model).items():
                if name in exclude:
                    continue
                if name in taken or PREFIX + name in generated:
                    raise TypeError(f"{func.__name__}: option {kebab(name)} of {block} clashes with another option")
                flags = [f"{kebab(name)}/--no-{name.replace('_', '-')}"] if opt.is_flag else [kebab(name)]
                field = model.model_fields[name]
                shown = "" if opt.default is None else f" Config default: {opt.default}."
                help_text = f"{_help(field, opt)} ({block}.{name}; unset: the config's value.{shown})"
                info = typer.Option(None, *flags, help=help_text, show_default=False)
                generated[PREFIX + name] = (block, opt)
                kind = Optional[bool] if opt.is_flag else Optional[opt.type]  # None: not given
                params.append(inspect.Parameter(PREFIX + name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=kind))

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            overrides = []
            for pname, (block, opt) in generated.items():
                raw = kwargs.pop(pname, None)
                if raw is not None:
                    value = opt.convert(raw)
                    overrides.append(f"{block}.{opt.name}={'null' if value is None else json.dumps(value)}")
            return func(*args, **{param: overrides}, **kwargs)

        return _with_signature(wrapper, sig, hints, params)

    return decorate
