"""`python -m recycle_hf.eval ...`: lm-eval's command line with the `recyclegpt` model and RecycleGPT tasks."""

import sys

from .cli import main


sys.exit(main())
