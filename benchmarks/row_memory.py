"""Process memory of a benchmark row (Linux /proc and getrusage): current RSS, the peak since a reset, the peak."""

from __future__ import annotations

import resource
from pathlib import Path


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_since_reset() -> int | None:
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def process_peak_rss() -> int:
    """getrusage(RUSAGE_SELF).ru_maxrss in bytes (Linux reports KiB): the whole process's peak."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
