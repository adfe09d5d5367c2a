"""What the benchmark measures, in small pieces: timing samples and their summary, resident memory,
prediction throughput and GDML.fit's stage times."""
from __future__ import annotations

import math
import resource
import time
from statistics import median

import numpy as np

from runtime.assembly import proc_field_bytes

STAGES = ("symmetry_s", "descriptor_s", "assembly_s", "solve_s", "coefficients_s",
          "energy_constant_s", "train_s")


def summary(samples):
    """{'samples': [...], 'median': x} (median None when there are no samples)."""
    samples = [float(s) for s in samples if s is not None]
    return {"samples": samples, "median": median(samples) if samples else None}


def peak_rss_bytes():
    """This process's peak resident memory: VmHWM of /proc/self/status.

    Not getrusage's ru_maxrss: Linux keeps that across fork and execve, so a subprocess
    would report at least its parent's peak at the time of the fork."""
    peak = proc_field_bytes("VmHWM", "/proc/self/status")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB


def current_rss_bytes():
    """This process's resident memory now: VmRSS of /proc/self/status."""
    return proc_field_bytes("VmRSS", "/proc/self/status")


def tile(R, b):
    """b geometries from R (repeated when R has fewer)."""
    return np.ascontiguousarray(R[np.arange(b) % len(R)])


def throughput(predict, R_pool, batches, repeats, min_time, max_call_s, log=None):
    """Geometries per second of ``predict(R_batch)`` for each batch size.

    Each batch size is called once first (its first-call time is kept: for JAX it includes
    the jit compile of that shape), then calibrated to n calls per sample (>= min_time), then
    ``repeats`` samples; the median seconds per call gives geometries/s.  A batch whose
    single call is estimated (from the previous batch's rate) or measured to take longer than
    max_call_s is skipped with the reason recorded."""
    out, rate = {}, None
    for b in batches:
        key = str(b)
        if rate is not None and b / rate > max_call_s:
            out[key] = {"batch": b, "status": "skipped",
                        "reason": f"estimated {b / rate:.0f} s per call at the measured rate "
                                  f"{rate:.3g}/s > max_call_s {max_call_s:g} s"}
            continue
        Rb = tile(R_pool, b)
        t = time.perf_counter()
        predict(Rb)
        first = time.perf_counter() - t
        t = time.perf_counter()
        predict(Rb)
        once = time.perf_counter() - t
        if once > max_call_s:
            out[key] = {"batch": b, "status": "skipped", "first_call_s": first,
                        "reason": f"one call took {once:.1f} s > max_call_s {max_call_s:g} s"}
            rate = b / once
            continue
        n = max(1, int(math.ceil(min_time / max(once, 1e-7))))
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(n):
                predict(Rb)
            samples.append((time.perf_counter() - t) / n)
        med = median(samples)
        rate = b / med
        out[key] = {"batch": b, "status": "ok", "calls_per_sample": n, "first_call_s": first,
                    "seconds_per_call": samples, "geometries_per_s": rate}
        if log:
            log(f"    predict batch {b}: {rate:.4g} geometries/s")
    return out


# GDML.fit's stage names (its on_stage hook) -> the STAGES keys the results and report use
FIT_STAGES = {"symmetries": "symmetry_s", "descriptors": "descriptor_s", "assembly": "assembly_s",
              "solve": "solve_s", "coefficients": "coefficients_s", "energy_constant": "energy_constant_s"}


class StageTotals:
    """An on_stage hook for GDML.fit: seconds summed per STAGES key."""

    def __init__(self):
        self.totals = {}

    def __call__(self, stage, seconds):
        key = FIT_STAGES.get(stage)
        if key is not None:
            self.totals[key] = self.totals.get(key, 0.0) + seconds
