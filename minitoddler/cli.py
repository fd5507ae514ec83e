"""Command-line flags from a config dataclass: every field becomes `--field-name`, typed by its default."""
from __future__ import annotations

import argparse
from dataclasses import MISSING, fields


def config_parser(cls, doc: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of dataclass `cls`; booleans are store_true switches.
    Scripts that need more flags (train_rl.py's reward options) add them to it."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=f"(default: {default})")
        elif isinstance(default, list):
            p.add_argument(flag, nargs="*", default=default, help=f"(default: {default})")
        else:
            p.add_argument(flag, type=type(default), default=default, help=f"(default: {default!r})")
    return p


def config_from_args(cls, args: argparse.Namespace):
    """The dataclass `cls` from parsed args (flags that are not its fields are ignored)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def parse_config(cls, doc: str | None = None, argv=None):
    """Parse argv into an instance of dataclass `cls`."""
    return config_from_args(cls, config_parser(cls, doc).parse_args(argv))
