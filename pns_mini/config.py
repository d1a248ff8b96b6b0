"""Typed dataclass config -> command line (+ optional JSON config file); resolved config saved.

Each script defines one flat `@dataclass Config`; a field's help text is the string literal placed
right under it (as in cleanrl), so the config reads as documentation:

    @dataclass
    class Config:
        beta: float = 0.04
        \"\"\"KL weight to the reference model (0-0.1).\"\"\"

Field `foo_bar` becomes the flag `--foo-bar`; bools get `--foo-bar/--no-foo-bar`; a field typed
`X | None` accepts the word `none`. `--config FILE.json` supplies values; flags override it.
Unknown flags, unknown JSON keys and JSON values of the wrong type are errors, each printed as
one line ("error: ...", exit status 2) that names the flag or the field.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import textwrap
import types
import typing
from pathlib import Path

from .data import write_atomic


def field_docs(cls) -> dict[str, str]:
    """{field name: the docstring literal right under it} read from the class source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp):
    """(base type, optional?) for `X`, `X | None`, `Optional[X]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _converter(tp, optional):
    def convert(text):
        if optional and text.lower() == "none":
            return None
        return tp(text)
    convert.__name__ = tp.__name__
    return convert


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the flag (not the 30-line usage first)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser(cls, description: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="JSON file of field values; flags given here override it")
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")  # argparse formats help with %
        flag = "--" + f.name.replace("_", "-")
        # default=SUPPRESS so that we know which flags the user actually gave (they beat JSON)
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=_converter(tp, optional), default=argparse.SUPPRESS,
                                metavar=tp.__name__.upper(), help=help_text)
    return parser


def parse_config(cls, argv: list[str] | None = None, description: str | None = None):
    """Parse argv (default sys.argv[1:]) into an instance of the dataclass `cls`."""
    parser = build_parser(cls, description)
    ns = vars(parser.parse_args(argv))
    values = {}
    config_file = ns.pop("config", None)
    if config_file:
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            loaded = json.loads(Path(config_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            parser.error(f"{config_file}: cannot read JSON config ({e})")
        if not isinstance(loaded, dict):
            parser.error(f"{config_file}: expected a JSON object of field values, got {type(loaded).__name__}")
        hints = typing.get_type_hints(cls)
        for key, value in loaded.items():
            if key not in names:
                parser.error(f"{config_file}: unknown field '{key}' (accepted: {', '.join(sorted(names))})")
            expected = json_type_error(hints[key], value)
            if expected:
                parser.error(f"{config_file}: field '{key}' (--{key.replace('_', '-')}) must be {expected}, "
                             f"got {json.dumps(value)}")
        values.update(loaded)
    values.update(ns)
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        parser.error(str(e))


def json_type_error(tp, value) -> str | None:
    """None when a JSON `value` fits the field type `tp`, else what would: "an integer" for
    "max_steps": "3" (a flag's text is converted; a JSON value must already have the type)."""
    base, optional = _base_type(tp)
    if value is None:
        return None if optional else f"{_TYPE_WORDS.get(base, base.__name__)} (not null)"
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}.get(base, lambda v: True)(value)
    if ok:
        return None
    return _TYPE_WORDS.get(base, base.__name__) + (" or null" if optional else "")


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_flags(cfg, at_least: dict[int, tuple[str, ...]] | None = None, one_of: dict[str, tuple] | None = None):
    """The range and choice guards of a Config's __post_init__: each field named in at_least[k]
    is >= k (None passes a field typed `X | None`), each field in one_of holds one of its values.
    ValueError names the flag: "--limit must be >= 1 or none, got -3"."""
    hints = typing.get_type_hints(type(cfg))
    for least, names in (at_least or {}).items():
        for name in names:
            value, optional = getattr(cfg, name), _base_type(hints[name])[1]
            if value is not None and value < least:
                none = " or none" if optional else ""
                raise ValueError(f"--{name.replace('_', '-')} must be >= {least}{none}, got {value}")
    for name, allowed in (one_of or {}).items():
        if (value := getattr(cfg, name)) not in allowed:
            raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {value!r}")


def save_config(cfg, path: str | Path, **extra) -> None:
    """config.json (the config's fields, then `extra`), written to a temp name and renamed: a kill
    never leaves half of one."""
    write_atomic(path, json.dumps({**dataclasses.asdict(cfg), **extra}, indent=2, default=str) + "\n")


def main_guard(main, cls, doc):
    """`if __name__ == "__main__": main_guard(main, Config, __doc__)`: parse, run, and turn the
    errors a user can act on (bad input, missing files) into one line instead of a traceback."""
    from .data import DataError
    from .modeling import ModelLoadError
    cfg = parse_config(cls, description=doc)
    try:
        return main(cfg)
    except (DataError, ModelLoadError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
