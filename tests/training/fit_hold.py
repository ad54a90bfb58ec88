"""A callback for subprocess fits in tests: at global step ``step`` it writes ``marker`` and blocks until the
process is killed, so a test can ``kill -9`` a fit at a known step without timing."""

from __future__ import annotations

import threading
from pathlib import Path

import lightning as L


class HoldAt(L.Callback):
    def __init__(self, step: int, marker: str):
        self.step, self.marker = int(step), Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.marker.write_text(str(self.step))
            threading.Event().wait()  # until killed
