"""`python -m reattn_batch` is `reattn-batch`."""

from reattn_batch.cli import main

main()
