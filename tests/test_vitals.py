"""A replica's process vitals, read for real in this process (no Ray): CPU share over the time since
the previous reading, open file descriptors, the worst event-loop lag; the controller's board keeps the
latest per replica, drops what is not a reading, and forgets replicas Serve dropped."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from controllers.monitors.vitals import Vitals, VitalsBoard
from serve_apps.vitals import ProcessVitals


_CPU_SCENARIO = """
import json, time
from serve_apps.vitals import ProcessVitals
v = ProcessVitals()
v.reading()
time.sleep(0.3)
idle = v.reading()["cpu_share"]
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
busy = v.reading()["cpu_share"]
print(json.dumps([idle, busy]))
"""


def test_cpu_share_covers_the_time_since_the_previous_reading():
    # In a fresh interpreter: the share counts every thread of the process, and this test process may run
    # other tests' threads (a Ray client, a thread pool) that would add to both windows.
    out = subprocess.run([sys.executable, "-c", _CPU_SCENARIO], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    idle, busy = json.loads(out.stdout.strip().splitlines()[-1])
    # The burn is 0.3 s of CPU time, so a shared core cannot fake it; the idle window burns next to none.
    assert idle < busy and busy > 0.1 and idle < 0.1, (idle, busy)


def test_open_file_descriptors_count_the_files_the_process_holds():
    v = ProcessVitals()
    before = v.reading()["open_fds"]
    files = [tempfile.TemporaryFile() for _ in range(5)]
    try:
        assert v.reading()["open_fds"] - before >= 5
    finally:
        for f in files:
            f.close()
    assert v.reading()["open_fds"] <= before + 1  # closed again (an unrelated descriptor may come and go)


def test_the_loop_lag_is_the_worst_stall_since_the_previous_reading_and_none_before_the_watch_runs():
    async def scenario():
        v = ProcessVitals(lag_interval_s=0.02)
        assert v.reading()["loop_lag_ms"] is None  # no watch yet: nothing measured, not "no lag"
        v.watch_loop()
        v.watch_loop()  # idempotent: one watch
        await asyncio.sleep(0.1)
        v.reading()
        time.sleep(0.25)  # user code blocking the event loop
        await asyncio.sleep(0.05)
        stalled = v.reading()["loop_lag_ms"]
        await asyncio.sleep(0.1)
        calm = v.reading()["loop_lag_ms"]
        return stalled, calm, len([t for t in asyncio.all_tasks() if t.get_name() == "raymedic-loop-lag"])

    stalled, calm, watches = asyncio.run(scenario())
    assert watches == 1
    assert stalled is not None and calm is not None and stalled > calm, (stalled, calm)
    assert stalled >= 150.0, stalled  # the 250 ms stall, less the timer's own period at most


def test_a_forked_process_reads_its_own_vitals():
    v = ProcessVitals()
    v.reading()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the reading must be of the child, whose CPU time starts at zero
        try:  # whatever happens, the child never returns into the test session
            os.close(r)
            share = v.reading()["cpu_share"]
            os.write(w, repr(share).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    got = os.read(r, 64).decode()
    os.close(r)
    assert got != "None" and float(got) >= 0.0


def test_the_board_keeps_the_latest_reading_per_replica_and_drops_non_readings():
    b = VitalsBoard()
    assert b.add("r1", {"cpu_share": 0.2, "open_fds": 40, "loop_lag_ms": 1.0}, ts=1.0) is not None
    b.add("r1", {"cpu_share": 0.9, "open_fds": 41, "loop_lag_ms": 300.0}, ts=2.0)
    for junk in (None, "x", {}, {"cpu_share": float("nan")}, {"open_fds": -1}, {"cpu_share": True}):
        assert b.add("r2", junk, ts=2.0) is None
    assert b.add("r3", {"open_fds": 7}, ts=2.0) == Vitals(ts=2.0, cpu_share=None, open_fds=7, loop_lag_ms=None)
    assert b.report() == {"r1": {"cpu_share": 0.9, "open_fds": 41, "loop_lag_ms": 300.0},
                          "r3": {"cpu_share": None, "open_fds": 7, "loop_lag_ms": None}}
    b.retain(["r3"])
    assert list(b.report()) == ["r3"]
