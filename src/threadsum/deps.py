"""Guards for optional dependencies: a missing extra is reported with the pip command that adds it."""
from __future__ import annotations

import importlib.util

from threadsum.errors import MissingExtraError  # noqa: F401 - re-exported

# import name -> distribution name where they differ
_DIST = {"rouge_score": "rouge-score", "yaml": "pyyaml", "multipart": "python-multipart",
         "prometheus_client": "prometheus-client"}


def require(module: str, extra: str) -> None:
    """Raise a clear error when ``module`` is not importable: install ``threadsum[extra]``."""
    if importlib.util.find_spec(module) is None:
        dist = _DIST.get(module, module)
        raise MissingExtraError(
            f"this command needs the Python package '{dist}', which is not installed. "
            f"Install it with: pip install 'threadsum[{extra}]'"
        )
