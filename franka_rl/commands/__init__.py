"""Subcommands of `franka-rl`: each module here defines `register(subparsers)`."""
