"""``cdc-pipelines demo``: the local stack and the pipeline end to end on it."""

from __future__ import annotations

import argparse

from cdc_pipelines.commands.common import say


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("demo", help="bring up the local stack and run the pipeline")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cdc_pipelines.demo.run import run_demo

    return run_demo(report=say)
