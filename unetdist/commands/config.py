"""`unetdist config`: print the resolved config as YAML."""

from __future__ import annotations

import argparse

from unetdist.commands._common import add_config_arguments, load_from_args

HELP = "print the resolved config (defaults < --config YAML < overrides) as YAML"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    from unetdist.config import to_yaml

    print(to_yaml(load_from_args(args)), end="")
    return 0
