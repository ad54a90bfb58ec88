"""Peak-memory measurement for stage summaries and benchmarks (host RSS and CUDA)."""

from __future__ import annotations

import resource
import sys
import threading
import time

import torch


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc, else ru_maxrss)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


class PeakMemory:
    """Context manager: peak extra host RSS (``peak_mb``, above the RSS at entry; sampled every 5 ms), the peak
    RSS itself (``peak_rss_mb``) and peak CUDA memory in MB."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak_mb = 0.0
        self.peak_rss_mb = 0.0
        self.cuda_peak_mb = 0.0

    def __enter__(self):
        self._base = rss_mb()
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_mb())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, rss_mb())
        self.peak_rss_mb = self._peak
        self.peak_mb = self._peak - self._base
        if torch.cuda.is_available():
            self.cuda_peak_mb = torch.cuda.max_memory_allocated() / 2**20
        return False
