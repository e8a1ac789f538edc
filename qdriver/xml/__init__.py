"""XML models: the only part of qdriver that touches lxml.

`safe` parses untrusted text (no entities, no DTD, no network, size limits);
`domain` is the libvirt domain XML model.
"""
