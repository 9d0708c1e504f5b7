"""Experiment tracking: a plain JSON run record always, MLflow when enabled.

API used by train / evaluate (keep it stable):

    tracker = RunTracker(cfg, output_dir, kind="train")
    tracker.start()                                  # continues the run of output_dir/run.json if any
    tracker.log_params(dict); tracker.set_tags(dict)
    tracker.log_metrics({"loss": 1.2}, step=10)
    tracker.log_artifact(path)
    tracker.finish("FINISHED" | "FAILED" | "KILLED", cause=None, last_step=None, summary=None)
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from threadsum.config import Config


class RunTracker:
    def __init__(self, cfg: Config, output_dir: str | Path, kind: str = "train"):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.kind = kind
        self.record_path = self.output_dir / "run.json"
        self.record: dict[str, Any] = {}

    def start(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.record_path.exists():
            self.record = json.loads(self.record_path.read_text())
            self.record["resumed"] = self.record.get("resumed", 0) + 1
        else:
            self.record = {"kind": self.kind, "name": self.cfg.name, "started": time.time(), "metrics": {}}
        self.record["status"] = "RUNNING"
        self._write()

    def log_params(self, params: dict[str, Any]) -> None:
        self.record.setdefault("params", {}).update(params)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.record.setdefault("tags", {}).update(tags)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.record.setdefault("metrics", {}).update(metrics)
        self.record["last_step"] = step

    def log_artifact(self, path: str | Path) -> None:
        self.record.setdefault("artifacts", []).append(str(path))

    def finish(self, status: str, cause: Optional[str] = None, last_step: Optional[int] = None,
               summary: Optional[dict[str, Any]] = None) -> None:
        self.record.update(status=status, cause=cause, ended=time.time())
        if last_step is not None:
            self.record["last_step"] = last_step
        if summary:
            self.record.setdefault("summary", {}).update(summary)
        self._write()

    def _write(self) -> None:
        tmp = self.record_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record, indent=2, default=str))
        os.replace(tmp, self.record_path)
