"""`python -m pipeline` is `reattn-batch`."""

from pipeline.cli import main

main()
