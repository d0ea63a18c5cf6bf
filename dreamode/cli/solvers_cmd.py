"""``dreamode solvers``: the solver registry as a table."""

from __future__ import annotations

import argparse
import json
from typing import Any

COLUMNS = ("name", "order", "adaptive", "differentiable", "adjoint", "backend")


def rows() -> list[dict[str, Any]]:
    """One dict per registered method (registry order), plus DREAM's own semi-implicit step."""
    import solvers

    out = []
    for name in solvers.available():
        e = solvers.get(name)
        out.append(
            {
                "name": e.name,
                "order": e.order,
                "adaptive": e.adaptive,
                "differentiable": e.differentiable,
                "adjoint": e.supports_adjoint,
                "backend": e.backend,
                "description": e.description,
            }
        )
    out.append(
        {
            "name": "ltc-fused",
            "order": 1,
            "adaptive": False,
            "differentiable": True,
            "adjoint": False,
            "backend": "dreamode",
            "description": "Semi-implicit LTC step (DREAM only, not in the registry): stable for any step.",
        }
    )
    return out


def table(items: list[dict[str, Any]], describe: bool = False) -> str:
    """The rows as an aligned text table."""
    cols = COLUMNS + (("description",) if describe else ())

    def cell(v: Any) -> str:
        return "yes" if v is True else "no" if v is False else str(v)

    body = [[cell(r[c]) for c in cols] for r in items]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)).rstrip() for b in body]
    return "\n".join(lines)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "solvers",
        help="list the ODE solvers (the registry) with their properties",
        description="The solver registry: name, order, adaptive, differentiable, adjoint, backend.",
    )
    p.add_argument("--describe", action="store_true", help="add each method's one-line description")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    items = rows()
    if args.json:
        print(json.dumps(items, indent=2))
    else:
        print(table(items, describe=args.describe))
    return 0
