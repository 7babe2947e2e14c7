"""TensorBoard beside log.jsonl (``--report-to tensorboard``): the same records as scalars, for those who watch runs
there. log.jsonl stays the source of truth (reports, resume); this is a mirror written through
``torch.utils.tensorboard`` into ``RUN/tensorboard/``. The ``tensorboard`` package is optional: asking for it
without the package is an error before any training starts."""
from __future__ import annotations

from pathlib import Path

from nlg.run_folder import TENSORBOARD

REPORT_TO = ("none", "tensorboard")
FOLDER = TENSORBOARD
# log.jsonl key -> TensorBoard tag
TAGS = {"loss": "train/loss", "lr": "train/lr", "tokens_per_s": "train/tokens_per_s", "valid_loss": "valid/loss"}


class TensorBoardUnavailable(RuntimeError):
    pass


def check_available(report_to: str) -> None:
    """Fail early, in one line, when ``report_to`` asks for a writer this machine cannot make."""
    if report_to not in REPORT_TO:
        raise ValueError(f"--report-to {report_to!r}: expected one of {', '.join(REPORT_TO)}")
    if report_to == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as exc:
            raise TensorBoardUnavailable(f"--report-to tensorboard needs the tensorboard package ({exc}): "
                                         "pip install tensorboard") from None


class ScalarMirror:
    """Writes each log record's known scalars at its step; ``purge_step`` (on resume) drops events at or after it
    that an interrupted attempt wrote, as log.jsonl drops its lines after the checkpoint."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / FOLDER
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def write(self, record: dict) -> None:
        step = record.get("step")
        if step is None:
            return
        for key, tag in TAGS.items():
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, float(value), int(step))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_mirror(report_to: str, run_dir: Path, purge_step: int | None = None) -> ScalarMirror | None:
    return ScalarMirror(run_dir, purge_step) if report_to == "tensorboard" else None
