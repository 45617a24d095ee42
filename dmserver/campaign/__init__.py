"""Staged firmware rollout campaigns.

Modules:

- ``spec``: the campaign definition (selection, waves, thresholds, limits,
  policy) and its validation, shared by the JSON API and the CLI.
- ``counters``: progress buckets and the per-wave counters that follow job
  events.
- ``lifecycle``: creating, starting, pausing, resuming, cancelling and
  stopping campaigns; wave evaluation and the automatic halt.
- ``dispatch``: turning pending members into FOTA jobs within the limits.
- ``packages``: the deltas a campaign needs, built before it starts.
- ``policy``: the device checks made before the Exec.
- ``scheduler``: the Twisted loop that runs ``dispatch`` in a server.
"""
