"""`python -m hrm_edge.cli`: the same as the `hrm-edge` command."""

from hrm_edge.cli.main import main

main()
