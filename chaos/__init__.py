"""`make chaos`: the whole system under a mixed load while its parts crash and hang, one at a time.

`system` starts a private stack and the three services; `load` is the admin and
the door controllers; `faults` breaks and restores one component; `invariants`
reads the audit log afterwards; `runner` ties them together; `python -m chaos`
prints the table and writes chaos-results/chaos-<time>.json.
"""
