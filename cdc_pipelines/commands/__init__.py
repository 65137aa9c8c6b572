"""Subcommands of ``cdc-pipelines``; each module adds its parser and handler."""
