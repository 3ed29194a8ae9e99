"""How the report writes things: Markdown tables, numbers, colours, and figures saved as small PNGs."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .. import io  # noqa: E402

DPI = 72
PALETTE = 32  # colours of a saved figure (line plots use a few dozen)


def method_palette(methods: list[str]) -> dict[str, Any]:
    """A distinct colour per method: tab10 up to 10 methods, tab20 (then husl) beyond, so no two methods share one."""
    n = len(set(methods))
    name = "tab10" if n <= 10 else ("tab20" if n <= 20 else "husl")
    colors = sns.color_palette(name, n_colors=max(n, 10 if name == "tab10" else n))
    return {m: colors[i % len(colors)] for i, m in enumerate(sorted(set(methods)))}


def value_palette(values: list[float]) -> dict[float, Any]:
    vals = sorted(set(values))
    colors = sns.color_palette("viridis", n_colors=max(len(vals), 1))
    return {v: colors[i] for i, v in enumerate(vals)}


def fmt_value(v: float) -> str:
    return f"{v:g}"


def num(x: Any, fmt: str = ".3g") -> str:
    """A number formatted with ``fmt``; "n/a" when not finite; other values as text."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "n/a" if not math.isfinite(v) else format(v, fmt)


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def save_figure(fig: Any, path: Path) -> None:
    """PNG at ``DPI``, reduced to a ``PALETTE``-colour palette (about a quarter of the size, same look for line
    plots: the committed results stay under 15 MB)."""
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    data = buf.getvalue()
    try:
        from PIL import Image

        small = _io.BytesIO()
        Image.open(_io.BytesIO(data)).convert("RGB").quantize(PALETTE).save(small, format="png", optimize=True)
        if small.tell() < len(data):
            data = small.getvalue()
    except Exception:  # noqa: BLE001 - the unreduced PNG is fine
        pass
    io.write_bytes(path, data)


def md_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A DataFrame as a GitHub Markdown table (floats with ``floatfmt``, NaN empty, booleans yes/no)."""
    if df.empty:
        return "_none_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, (float, np.floating)):
                cells.append("" if math.isnan(v) else format(float(v), floatfmt))
            elif isinstance(v, (bool, np.bool_)):
                cells.append("yes" if v else "no")
            else:
                cells.append("" if v is None else str(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def theme(font_scale: float = 1.0) -> None:
    sns.set_theme(style="whitegrid", context="notebook", font_scale=font_scale)


# the names other modules (and plugins) used before the report became a package
_save, _md_table, _num, _slug, _fmt_value = save_figure, md_table, num, slug, fmt_value
