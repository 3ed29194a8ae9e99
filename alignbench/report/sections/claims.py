"""Claims from the literature, checked against this sweep (the claims and their checks: ``report/claims.py``)."""

from __future__ import annotations

from ..claims import CLAIMS, ClaimData
from ..core import ReportContext, register_section

MARK = {"supported": "**supported**", "contradicted": "**contradicted**", "undecided": "undecided",
        "not tested": "not tested in this sweep"}


@register_section("literature checks", order=55)
def section_claims(ctx: ReportContext) -> str:
    data = ClaimData.from_context(ctx)
    parts = ["## Claims from the literature, checked", "",
             "Each claim is checked on this sweep's runs: *supported* or *contradicted* only where the 95% interval over "
             "seeds of the deciding quantity excludes the claim's threshold, *undecided* otherwise (with its n), *not "
             "tested* where the sweep has no runs for it. The checks are in `alignbench/report/claims.py`.", ""]
    for claim in CLAIMS:
        parts.append(f"- \"{claim.text}\" ({claim.source})")
        for v in claim.check(data):
            where = f"`{v.task}`: " if v.task else ""
            parts.append(f"  - {where}{MARK.get(v.status, v.status)}: {v.evidence}.")
    return "\n".join(parts) + "\n"
