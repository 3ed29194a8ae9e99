"""What the policies actually say: example generations side by side, and degeneration against KL."""

from __future__ import annotations

from ..core import ReportContext, register_section
from ..examples import section_degeneration, section_examples


@register_section("examples", order=32)
def examples(ctx: ReportContext) -> str:
    return section_examples(ctx.out, ctx.summary, ctx.runs)


@register_section("degeneration", order=45, figures=("degen_",))
def degeneration(ctx: ReportContext) -> str:
    return section_degeneration(ctx.out, ctx.summary, ctx.runs, ctx.figures)
