"""Memory files: written and read through migration (`memfile`), and their libvirt
save-image header (`header`)."""
