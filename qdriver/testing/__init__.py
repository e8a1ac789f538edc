"""Test support: the guest pool behind the pytest plugin, and fault points.

`guestpool` boots a guest once, snapshots it when ready and reverts it before
each test; `plugin` is the pytest plugin (entry point ``pytest11: qdriver``);
`faults` lets a test kill an operation at a named point, to check recovery.
The package imports nothing of pytest until the plugin is loaded.
"""
