"""`python -m vlmserve.cli` is `vlmserve`."""

import sys

from vlmserve.cli.main import main

sys.exit(main())
