"""Operations on a domain, each as a pure plan and its execution.

``create_plan`` decides what a snapshot request means (no I/O);
``create_exec`` carries the plan out through the shared undo mechanism in
``transaction``.  ``memfile``, ``blocknodes`` and ``progress`` are the
pieces the executions share.
"""
