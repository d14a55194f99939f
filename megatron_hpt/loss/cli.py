"""Command-line flags of the loss head: ``--loss-preset NAME`` and one ``--loss-<field>`` per
LossConfig field (default None = keep the preset's value). ``arguments.py`` calls both."""
from __future__ import annotations

import argparse
import functools
import dataclasses
import typing

from .config import LossConfig, preset, preset_names


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


@functools.lru_cache(maxsize=1)
def _config_source_lines() -> tuple:
    import inspect
    return tuple(inspect.getsource(LossConfig).splitlines())


def _field_doc(name: str) -> str:
    """The docstring under a LossConfig field, read from the source."""
    lines = _config_source_lines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f"{name}:") and i + 1 < len(lines):
            doc = []
            for nxt in lines[i + 1:]:
                doc.append(nxt.strip().strip('"'))
                if nxt.rstrip().endswith('"""') and len(doc) >= 1 and (
                        len(doc) > 1 or nxt.strip().count('"""') == 2):
                    break
            return " ".join(d for d in doc if d)
    return ""


def add_loss_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the loss-head group to ``parser`` and return it."""
    group = parser.add_argument_group("loss head (megatron_hpt.loss)")
    group.add_argument("--loss-preset", default="sft", choices=preset_names(),
                       help="loss preset (default: sft); --loss-<field> flags override it")
    hints = typing.get_type_hints(LossConfig)
    for f in dataclasses.fields(LossConfig):
        kind = hints[f.name]
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        flag = "--loss-" + f.name.replace("_", "-")
        conv = _parse_bool if kind is bool else kind
        group.add_argument(flag, dest=f"loss_{f.name}", type=conv, default=None,
                           metavar="BOOL" if kind is bool else kind.__name__.upper(),
                           help=_field_doc(f.name) + " (default: the preset's value)")
    return parser


def loss_config_from_args(args: argparse.Namespace) -> LossConfig:
    """The preset named by ``args.loss_preset`` with every non-None ``--loss-<field>`` applied,
    validated by LossConfig.__post_init__."""
    overrides = {}
    for f in dataclasses.fields(LossConfig):
        value = getattr(args, f"loss_{f.name}", None)
        if value is not None:
            overrides[f.name] = value
    return preset(getattr(args, "loss_preset", "sft")).replace(**overrides)
