"""The SIGKILL crash harness of replaygen: ``python -m crash`` (see crash/README.md).

Real worker processes are killed with SIGKILL at every named boundary of a run's life
(and at random moments), restarted, and the crash-safety invariants are checked
after every restart against the store's journals and an fsynced side-effect log
kept outside the store.
"""
