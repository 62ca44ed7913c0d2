"""``raymedic bench``: figures measured, never asserted.

One module per scenario: :mod:`~raymedic.bench.faults` (replica faults, raymedic against plain
Serve), :mod:`~raymedic.bench.saturation`, :mod:`~raymedic.bench.controller_step`,
:mod:`~raymedic.bench.drift` (detectors on replayed streams) and :mod:`~raymedic.bench.live`
(the same streams through a deployed service); what they share: :mod:`~raymedic.bench.cluster`
(the embedded cluster and the two systems under test), :mod:`~raymedic.bench.loadgen` (open-loop
load) and :mod:`~raymedic.bench.report` (JSON and table cells).

Nothing is imported here: each scenario loads its own dependencies when it runs.
"""
