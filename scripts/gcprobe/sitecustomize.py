"""Measure the cyclic collector's time in each process: put this folder on PYTHONPATH.

    PYTHONPATH=scripts/gcprobe gunicorn -c gunicorn.conf.py wsgi:app

Each process (gunicorn's workers included: the counts restart after fork)
writes ``/tmp/gcprobe.<pid>`` when it exits: its wall time, the collector's
total time, and the passes and time of each generation. This is how
docs/benchmarks.md measured the collector at stream-1000.
"""

import atexit
import gc
import os
import time

_state = {"born": time.perf_counter(), "start": 0.0, "passes": [0, 0, 0],
          "seconds": [0.0, 0.0, 0.0]}


def _timed(phase, info):
    if phase == "start":
        _state["start"] = time.perf_counter()
        return
    generation = info["generation"]
    _state["passes"][generation] += 1
    _state["seconds"][generation] += time.perf_counter() - _state["start"]


def _restart():
    _state.update(born=time.perf_counter(), passes=[0, 0, 0], seconds=[0.0, 0.0, 0.0])


def _write():
    seconds = _state["seconds"]
    with open(f"/tmp/gcprobe.{os.getpid()}", "w") as out:
        out.write(f"pid={os.getpid()} wall_s={time.perf_counter() - _state['born']:.1f} "
                  f"gc_s={sum(seconds):.3f} passes={_state['passes']} "
                  f"seconds={[round(s, 3) for s in seconds]}\n")


gc.callbacks.append(_timed)
os.register_at_fork(after_in_child=_restart)
atexit.register(_write)
