"""`python -m franka_rl` runs the `franka-rl` command line."""

import sys

from franka_rl.cli import main

sys.exit(main())
