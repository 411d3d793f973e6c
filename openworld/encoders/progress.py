"""The progress bar every encoder shows on long inputs (rich, on stderr)."""

from __future__ import annotations


def progress_bar(description: str, total: int):
    """A started-on-demand rich ``Progress`` with one task of ``total`` items; returns (bar, task)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    return bar, bar.add_task(description, total=total)
