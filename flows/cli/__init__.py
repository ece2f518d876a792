"""The ``dsqnet`` command line: one subcommand per job, each checking its input before any work starts."""

from flows.cli.main import main

__all__ = ["main"]
