"""Block devices of a running QEMU: node names and discovery (`nodes`), and
block-commit jobs (`jobs`)."""
