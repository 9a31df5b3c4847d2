"""``python -m pinfer.cli``: the ``pinfer`` command without the console script (what the local service
and the deployment smoke test spawn, so they run the interpreter they were started with)."""

import sys

from pinfer.cli import main

sys.exit(main())
