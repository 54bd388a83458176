"""``python -m tinysiglip.report``: the report's command line (it lives in :mod:`tinysiglip.results.report`)."""

import sys

from tinysiglip.results.report import main

if __name__ == "__main__":
    sys.exit(main())
