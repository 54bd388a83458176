"""``python -m tinysiglip`` is the ``tinysiglip`` command."""

import sys

from tinysiglip.cli import main

sys.exit(main())
