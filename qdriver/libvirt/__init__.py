"""libvirt-python's API on qdriver: ``import qdriver.libvirt as libvirt``.

Code written for libvirt-python runs unchanged against a state dir:
``libvirt.open("qdriver:///var/lib/myapp/vms")`` (``qemu:///session``: the
default state dir), then ``virConnect``, ``virDomain`` and
``virDomainSnapshot`` as libvirt-python has them, libvirt's constants (same
names, same values), `libvirtError`, and ``virEventRegisterDefaultImpl`` /
``virEventRunDefaultImpl`` so libvirt-style event loops work as they are.
A call qdriver does not serve raises `libvirtError` with
``VIR_ERR_NO_SUPPORT``, naming the call.
"""
from __future__ import annotations

from .api import (
    getVersion,
    libvirtError,
    open,
    openReadOnly,
    virConnect,
    virDomain,
    virDomainSnapshot,
    virEventRegisterDefaultImpl,
    virEventRunDefaultImpl,
)
from .constants import ALL as _ALL

globals().update(_ALL)


def __getattr__(name: str) -> int:
    """Every constant is set above; this only tells type checkers they are ints."""
    raise AttributeError(f"module 'qdriver.libvirt' has no attribute '{name}'")


__all__ = ["libvirtError", "virConnect", "virDomain", "virDomainSnapshot", "open",
           "openReadOnly", "virEventRegisterDefaultImpl", "virEventRunDefaultImpl",
           "getVersion", *_ALL]
