"""Plain-text tables of metrics: one row per method / benchmark, one column per metric."""
from __future__ import annotations

from collections.abc import Mapping


def format_table(rows: Mapping[str, Mapping[str, float]], *, digits: int = 2, columns=None) -> str:
    """Rows keyed by name, columns = the union of metric names in first-seen order (or ``columns``).

    Missing values print as "-"; non-numeric values are printed as they are.
    """
    if columns is None:
        columns = []
        for metrics in rows.values():
            for key in metrics:
                if key not in columns:
                    columns.append(key)
    header = [""] + list(columns)
    body = []
    for name, metrics in rows.items():
        cells = [str(name)]
        for c in columns:
            v = metrics.get(c)
            if v is None:
                cells.append("-")
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                cells.append(f"{v:.{digits}f}")
            else:
                cells.append(str(v))
        body.append(cells)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]
    return "\n".join(lines)
