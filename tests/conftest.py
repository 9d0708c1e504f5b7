"""Test-wide settings: never reach a model hub, headless plotting, quiet tokenizers."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_TRACKING_URI", "")
os.environ.pop("MLFLOW_TRACKING_URI", None)

from pathlib import Path

import pytest

SHARED_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "kaggle_sample"


@pytest.fixture
def kaggle_sample() -> Path:
    """The first 10 threads of the real Kaggle corpus, when the shared folder is present."""
    if not (SHARED_SAMPLE / "email_thread_details.csv").exists():
        pytest.skip(f"real Kaggle sample not available at {SHARED_SAMPLE}")
    return SHARED_SAMPLE
