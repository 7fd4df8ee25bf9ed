"""Process memory readings for the benchmarks (Linux ``/proc``): what the CPU-side peak-memory
figures of ``loss_side.py`` and ``coco_load.py`` are measured with."""

from __future__ import annotations


def status_kib(field: str) -> int:
    """A KiB field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset ``VmHWM`` (the peak RSS) to the current RSS; returns that RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kib("VmRSS")
