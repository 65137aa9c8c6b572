"""What every subcommand shares: stderr messages, the declaration option, settings."""

from __future__ import annotations

import argparse
import sys

from cdc_pipelines.config import PipelineConfig, load_config
from cdc_pipelines.settings import ConnectionSettings

EXIT_OK = 0
EXIT_DISCREPANCIES = 1
EXIT_USAGE = 2
EXIT_SERVICE = 3


def say(message: str) -> None:
    """Progress and diagnostics go to stderr; stdout carries the command's result."""
    print(message, file=sys.stderr, flush=True)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="the pipeline declaration (default: $CDC_PIPELINE_CONFIG or ./pipeline.yaml)",
    )


def declaration(args: argparse.Namespace) -> PipelineConfig:
    return load_config(getattr(args, "config", None))


def settings() -> ConnectionSettings:
    return ConnectionSettings.from_env()
