"""``python -m nanny_io``: the ``nanny-io`` command.

The usual ``start`` command line (the provisioner's) goes straight to the start-up module:
the kernel's spawn does not wait for the rest of the CLI to load.
"""

import sys

from .startup import main_quickly

code = main_quickly(sys.argv[1:])
if code is None:
    from .cli import main

    code = main()
sys.exit(code)
