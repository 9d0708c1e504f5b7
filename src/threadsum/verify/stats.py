"""Figures over many checked summaries: what `threadsum evaluate` reports next to ROUGE."""
from __future__ import annotations

from typing import Any, Sequence

from threadsum.verify.claims import KINDS, Claim


def grounding_stats(claims_per_summary: Sequence[Sequence[Claim]]) -> dict[str, Any]:
    """Summary-level grounding figures for one system.

    Returns {"n": summaries, "flagged_share": share of summaries with >= 1 unsupported claim (0-1),
    "unsupported_per_summary": {kind: mean count per summary}, "unsupported_per_summary_total": mean,
    "claims_per_summary": mean number of claims, "attribution_errors": total action claims whose person
    is in the thread but did not write what is said, "attribution_errors_per_summary": mean}.
    """
    n = len(claims_per_summary)
    if n == 0:
        return {"n": 0, "flagged_share": float("nan"), "unsupported_per_summary": {k: float("nan") for k in KINDS},
                "unsupported_per_summary_total": float("nan"), "claims_per_summary": float("nan"),
                "attribution_errors": 0, "attribution_errors_per_summary": float("nan")}
    by_kind = {k: 0 for k in KINDS}
    flagged = attribution = total_claims = 0
    for claims in claims_per_summary:
        bad = [c for c in claims if not c.supported]
        flagged += bool(bad)
        total_claims += len(claims)
        for c in bad:
            by_kind[c.kind] += 1
            attribution += c.attribution
    return {
        "n": n,
        "flagged_share": flagged / n,
        "unsupported_per_summary": {k: v / n for k, v in by_kind.items()},
        "unsupported_per_summary_total": sum(by_kind.values()) / n,
        "claims_per_summary": total_claims / n,
        "attribution_errors": attribution,
        "attribution_errors_per_summary": attribution / n,
    }
