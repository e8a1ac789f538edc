"""libvirt-python's constant names and values, as far as qdriver serves them."""
from __future__ import annotations

from ..errors import ErrorCode
from ..events.kinds import DETAILS, EventType
from ..runstatus import DomainState

# -- domain states and their reasons ------------------------------------------------

STATES = {f"VIR_DOMAIN_{s.name}": int(s) for s in DomainState}

REASONS: dict[DomainState, tuple[str, ...]] = {
    DomainState.NOSTATE: ("unknown",),
    DomainState.RUNNING: ("unknown", "booted", "migrated", "restored", "from snapshot",
                          "unpaused", "migration canceled", "save canceled", "wakeup",
                          "crashed", "post-copy", "post-copy failed"),
    DomainState.BLOCKED: ("unknown",),
    DomainState.PAUSED: ("unknown", "user", "migrating", "saving", "dumping", "I/O error",
                         "watchdog", "from snapshot", "shutting down", "snapshot", "crashed",
                         "starting up", "post-copy", "post-copy failed", "api error"),
    DomainState.SHUTDOWN: ("unknown", "user"),
    DomainState.SHUTOFF: ("unknown", "shutdown", "destroyed", "crashed", "migrated", "saved",
                          "failed", "from snapshot", "daemon"),
    DomainState.CRASHED: ("unknown", "panicked"),
    DomainState.PMSUSPENDED: ("unknown",),
}
"""Each state's reason words (as qdriver says them) at libvirt's value."""
REASON_ALIASES = {"migrated": "migrating"}
"""qdriver's words for a paused reason libvirt counts as another's."""

_REASON_PREFIX = {DomainState.RUNNING: "RUNNING", DomainState.PAUSED: "PAUSED",
                  DomainState.SHUTOFF: "SHUTOFF", DomainState.CRASHED: "CRASHED",
                  DomainState.SHUTDOWN: "SHUTDOWN"}
_REASON_NAMES = {"from snapshot": "FROM_SNAPSHOT", "I/O error": "IOERROR",
                 "migrating": "MIGRATION", "saving": "SAVE", "dumping": "DUMP",
                 "post-copy": "POSTCOPY", "post-copy failed": "POSTCOPY_FAILED",
                 "api error": "API_ERROR", "migration canceled": "MIGRATION_CANCELED",
                 "save canceled": "SAVE_CANCELED", "shutting down": "SHUTTING_DOWN",
                 "starting up": "STARTING_UP"}
REASON_CONSTANTS = {
    f"VIR_DOMAIN_{prefix}_{_REASON_NAMES.get(word, word.upper())}": i
    for state, prefix in _REASON_PREFIX.items() for i, word in enumerate(REASONS[state])}


def reason_code(state: DomainState, reason: str) -> int:
    """libvirt's number for a reason word (0, unknown, for a word it has not)."""
    words = REASONS.get(state, ("unknown",))
    reason = REASON_ALIASES.get(reason, reason)
    return words.index(reason) if reason in words else 0


# -- events -------------------------------------------------------------------------

LIFECYCLE_TYPES = tuple(t for t in EventType if t < EventType.REBOOT)
EVENTS = {f"VIR_DOMAIN_EVENT_{t.name}": int(t) for t in LIFECYCLE_TYPES} | {
    f"VIR_DOMAIN_EVENT_{t.name}_{d.upper()}": i
    for t in LIFECYCLE_TYPES for i, d in enumerate(DETAILS[t])}
EVENT_IDS = {"VIR_DOMAIN_EVENT_ID_LIFECYCLE": 0, "VIR_DOMAIN_EVENT_ID_REBOOT": 1}

# -- flags ----------------------------------------------------------------------------

FLAGS = {
    "VIR_DOMAIN_NONE": 0, "VIR_DOMAIN_START_PAUSED": 1, "VIR_DOMAIN_START_AUTODESTROY": 2,
    "VIR_DOMAIN_START_BYPASS_CACHE": 4, "VIR_DOMAIN_START_FORCE_BOOT": 8,
    "VIR_DOMAIN_START_VALIDATE": 16,
    "VIR_DOMAIN_XML_SECURE": 1, "VIR_DOMAIN_XML_INACTIVE": 2,
    "VIR_DOMAIN_XML_UPDATE_CPU": 4, "VIR_DOMAIN_XML_MIGRATABLE": 8,
    "VIR_DOMAIN_UNDEFINE_MANAGED_SAVE": 1, "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA": 2,
    "VIR_DOMAIN_UNDEFINE_NVRAM": 4, "VIR_DOMAIN_UNDEFINE_KEEP_NVRAM": 8,
    "VIR_DOMAIN_SAVE_BYPASS_CACHE": 1, "VIR_DOMAIN_SAVE_RUNNING": 2,
    "VIR_DOMAIN_SAVE_PAUSED": 4,
    "VIR_DOMAIN_SHUTDOWN_DEFAULT": 0, "VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN": 1,
    "VIR_DOMAIN_SHUTDOWN_GUEST_AGENT": 2,
    "VIR_DOMAIN_REBOOT_DEFAULT": 0, "VIR_DOMAIN_REBOOT_ACPI_POWER_BTN": 1,
    "VIR_DOMAIN_REBOOT_GUEST_AGENT": 2,
    "VIR_DOMAIN_DESTROY_DEFAULT": 0, "VIR_DOMAIN_DESTROY_GRACEFUL": 1,
    "VIR_CONNECT_LIST_DOMAINS_ACTIVE": 1, "VIR_CONNECT_LIST_DOMAINS_INACTIVE": 2,
    "VIR_CONNECT_LIST_DOMAINS_PERSISTENT": 4, "VIR_CONNECT_LIST_DOMAINS_TRANSIENT": 8,
    "VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE": 1, "VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT": 2,
    "VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA": 4, "VIR_DOMAIN_SNAPSHOT_CREATE_HALT": 8,
    "VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY": 16, "VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT": 32,
    "VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE": 64, "VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC": 128,
    "VIR_DOMAIN_SNAPSHOT_CREATE_LIVE": 256, "VIR_DOMAIN_SNAPSHOT_CREATE_VALIDATE": 512,
    "VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN": 1, "VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY": 2,
    "VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN_ONLY": 4,
    "VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING": 1, "VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED": 2,
    "VIR_DOMAIN_SNAPSHOT_REVERT_FORCE": 4,
    "VIR_DOMAIN_SNAPSHOT_LIST_DESCENDANTS": 1, "VIR_DOMAIN_SNAPSHOT_LIST_ROOTS": 1,
    "VIR_DOMAIN_SNAPSHOT_LIST_METADATA": 2, "VIR_DOMAIN_SNAPSHOT_LIST_LEAVES": 4,
    "VIR_DOMAIN_SNAPSHOT_LIST_NO_LEAVES": 8, "VIR_DOMAIN_SNAPSHOT_LIST_NO_METADATA": 16,
    "VIR_DOMAIN_SNAPSHOT_LIST_INACTIVE": 32, "VIR_DOMAIN_SNAPSHOT_LIST_ACTIVE": 64,
    "VIR_DOMAIN_SNAPSHOT_LIST_DISK_ONLY": 128, "VIR_DOMAIN_SNAPSHOT_LIST_INTERNAL": 256,
    "VIR_DOMAIN_SNAPSHOT_LIST_EXTERNAL": 512, "VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL": 1024,
}
SNAPSHOT_LIST_FLAGS = ("roots", "metadata", "leaves", "no_leaves", "no_metadata", "inactive",
                       "active", "disk_only", "internal", "external", "topological")
"""`qdriver.ListFilter`'s fields by bit (the first bit is roots, or descendants for the
listing of a snapshot's children)."""

# -- errors ---------------------------------------------------------------------------

ERRORS = {f"VIR_ERR_{c.name}": int(c) for c in ErrorCode} | {
    "VIR_ERR_OK": 0, "VIR_FROM_QEMU": 10, "VIR_FROM_NONE": 0}

ALL: dict[str, int] = STATES | REASON_CONSTANTS | EVENTS | EVENT_IDS | FLAGS | ERRORS

__all__ = ["ALL", "REASONS", "reason_code", "SNAPSHOT_LIST_FLAGS", "LIFECYCLE_TYPES"]
