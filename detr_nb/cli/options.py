"""``train``'s (and ``compare``'s) options, one per :class:`~detr_nb.engine.config.TrainConfig` field, with its
help text; ``--set FIELD=VALUE`` / ``--set FIELD.KEY=VALUE`` for anything else."""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any, Dict, Mapping, Optional

from ..engine.config import TrainConfig
from ..engine.recipes import RECIPE_FIELDS
from ..errors import ConfigError

_ALIASES = {"time_budget_s": "--time-budget", "checkpoint_every_s": "--checkpoint-every"}


def _none_or(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "off") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def json_value(text: str):
    """A JSON value, or the text itself when it is not JSON (a bare string)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def add_config_options(p: argparse.ArgumentParser, defaults: Optional[Mapping[str, Any]] = None) -> None:
    """One option per TrainConfig field; the help shows ``defaults`` (else the field's, or "from the recipe")."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = _ALIASES.get(f.name, "--" + f.name.replace("_", "-"))
        tp = hints[f.name]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        optional = origin is typing.Union and type(None) in args
        base = next((a for a in args if a is not type(None)), tp) if optional else tp
        if defaults and f.name in defaults:
            shown = "none" if defaults[f.name] is None else json.dumps(defaults[f.name])
        elif f.name in RECIPE_FIELDS:
            shown = "from the recipe"
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = "none" if default is None else json.dumps(default)
        helptext = f"{f.metadata['help']} (default: {shown})"
        if base is bool:
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=helptext)
        elif base in (int, float, str):
            p.add_argument(flag, dest=f.name, type=_none_or(base) if optional else base, default=argparse.SUPPRESS,
                           metavar=f.name.upper(), help=helptext)
        else:  # dicts: JSON
            p.add_argument(flag, dest=f.name, type=_none_or(json.loads) if optional else json.loads,
                           default=argparse.SUPPRESS, metavar="JSON", help=helptext)


def config_from_args(args: argparse.Namespace, base: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """The TrainConfig of the options: ``base`` (e.g. compare's defaults) and the recipe, then the options
    given, then ``--set``."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = vars(args)   # options not on the command line are absent (argparse.SUPPRESS)
    values: Dict[str, Any] = {k: given[k] for k in names if k in given}
    keyed = []
    for item in args.set or []:
        key, sep, text = item.partition("=")
        name, dot, sub = key.partition(".")
        if not sep or name not in names or (dot and not sub):
            raise ConfigError(f"--set expects FIELD=VALUE or FIELD.KEY=VALUE with a TrainConfig field, got {item!r}")
        if dot:
            keyed.append((name, sub, json_value(text)))
        else:
            values[name] = json_value(text)
    cfg = TrainConfig(**{**(base or {}), **values})
    for name, sub, value in keyed:      # one key of a dict field, on top of the recipe's value
        current = getattr(cfg, name)
        if not isinstance(current, dict):
            raise ConfigError(f"--set {name}.{sub}: {name} is not a dict (it is {current!r})")
        cfg = cfg.replace(**{name: {**current, sub: value}})
    return cfg


def add_set_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="any TrainConfig field, VALUE in JSON; FIELD.KEY=VALUE sets one key of a dict field "
                        "(repeatable)")
