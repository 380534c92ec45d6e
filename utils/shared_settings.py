"""The settings several scripts share, declared here once: the device, data-loading workers, the progress display,
the dataset folder. Each script's options class takes them with `utils.settings.same_as` (TrainConfig,
TestOptions, PredictOptions, GridOptions), changing only what differs there (a group, a help text)."""
from __future__ import annotations

from dataclasses import dataclass

from utils.cli import default_device
from utils.machine import default_num_workers
from utils.settings import setting


@dataclass(kw_only=True)
class SharedSettings:
    device: str = setting(help="cuda, cuda:1, cpu, ...", factory=default_device)
    num_workers: int = setting(help="data-loading worker processes (default: 4, at most the available cores)",
                               factory=default_num_workers, minimum=0)
    progress: bool = setting(True, "progress bar (on a terminal; written to a file, a line every 30 s)",
                             inverse_flag="--no_progress")
    root_path: str = setting("", "dataset folder (default: ./data/<dataset>)")
