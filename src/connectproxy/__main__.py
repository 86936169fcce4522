"""`python -m connectproxy` is the same as the `connectproxy` console script."""

import sys

from connectproxy.process.entry import main

sys.exit(main())
