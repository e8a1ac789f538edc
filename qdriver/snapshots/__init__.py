"""Snapshot metadata: the pure tree (`tree`), the files and the index of delete
marks (`store`), and the `Snapshot` handle (`handle`)."""
