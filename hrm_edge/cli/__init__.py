"""The `hrm-edge` command line: the top layer, importing every stage and imported by none."""
