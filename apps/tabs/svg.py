"""Charts as inline SVG: sharp at any size, text kept as text, and what is drawn can be read back in a browser."""

from __future__ import annotations

import io
from typing import Any


def figure_svg(fig: Any) -> str:
    """The matplotlib figure as an <svg> element (closed afterwards)."""
    from matplotlib import pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg")
    plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]
