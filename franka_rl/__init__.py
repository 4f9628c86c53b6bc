"""The composition root: the one config tree and the `franka-rl` command line.

Every other package (robot_env, sim, teleop, agent, reward_classifier) owns its own config
dataclasses; this package only assembles them and dispatches subcommands.
"""
