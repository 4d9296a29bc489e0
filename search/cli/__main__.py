"""`python -m search.cli`: the `hpo` command."""

import sys

from search.cli.main import main

sys.exit(main())
