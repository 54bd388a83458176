"""``python -m tinysiglip.dashboards``: the dashboards' command line (see :mod:`tinysiglip.results.dashboards`)."""

import sys

from tinysiglip.results.dashboards import main

if __name__ == "__main__":
    sys.exit(main())
