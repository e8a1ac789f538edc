"""Capabilities: which accelerators the host can use (`accel`), what a QEMU binary
can do (`qemucaps`), what the running QEMU lets a snapshot use (`running`)."""
