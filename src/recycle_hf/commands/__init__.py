"""Subcommands of the `recycle-hf` command line (see `recycle_hf.cli`)."""
