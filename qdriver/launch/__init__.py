"""Starting QEMU: the command line (`cmdline`, pure), the checks and command a start
runs (`start`), and the run record, launch, stop and reap (`runtime`)."""
