"""The command line's help names every bundled config and dataset layout (kept by hand for speed)."""

from __future__ import annotations

from dsqnet.data import LAYOUTS
from dsqnet.training.config import bundled_configs
from flows.cli.main import build_parser


def _help(command: str) -> str:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]  # noqa: SLF001 - argparse has no public accessor
    return " ".join(sub.format_help().split())


def test_train_help_names_every_bundled_config():
    text = _help("train")
    assert all(name in text for name in bundled_configs())


def test_evaluate_help_names_every_layout():
    text = _help("evaluate")
    assert all(name in text for name in LAYOUTS)
