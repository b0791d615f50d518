"""Rich progress bars that name the step and show its rate."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
# Tables and results go to stdout; progress, logs and errors to stderr.
output = Console()
log = logging.getLogger("study.progress")
LOG_INTERVAL_SECONDS = 15.0


def setup_logging(level: int = logging.INFO) -> None:
    import warnings

    # Library deprecation notices and per-load weight bars drown the step progress.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    except ImportError:
        pass
    root = logging.getLogger()
    if not any(isinstance(handler, RichHandler) for handler in root.handlers):
        root.addHandler(RichHandler(console=console, show_path=False, rich_tracebacks=False))
    root.setLevel(logging.WARNING)
    logging.getLogger("study").setLevel(level)
    logging.getLogger("analysis").setLevel(level)


@contextlib.contextmanager
def progress_bar(description: str, total: int, unit: str = "rows") -> Iterator[callable]:
    """Yield ``advance(n, **fields)``; the bar shows the step, count, rate and ETA.

    Extra fields (for example ``loss`` or ``tok_s``) appear after the rate.
    """
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal and not _force_progress(),
    )
    with progress:
        task = progress.add_task(description, total=total, rate="", extra="")
        last_log = [0.0]

        def advance(count: int = 1, **fields) -> None:
            progress.advance(task, count)
            elapsed = progress.tasks[task].elapsed or 0.0
            done = progress.tasks[task].completed
            rate = f"{done / elapsed:.1f} {unit}/s" if elapsed > 0 else ""
            extra = " ".join(f"{key}={value}" for key, value in fields.items())
            progress.update(task, rate=rate, extra=extra)
            # Without a terminal (CI logs, files) the bar is off: log a line per interval.
            if progress.disable and (elapsed - last_log[0] >= LOG_INTERVAL_SECONDS or done >= total):
                last_log[0] = elapsed
                log.info("%s: %d/%d %s %s", description, done, total, rate, extra)

        yield advance


def _force_progress() -> bool:
    import os

    return os.environ.get("STUDY_PROGRESS", "") == "1"
