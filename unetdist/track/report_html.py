"""HTML building blocks of the run report: escaping, number formatting, tables, embedded figures.

Kept apart from unetdist.track.report, which decides what the page says; this decides how it looks.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

MAX_SIDE = 1400  # px: larger embedded images are downscaled to keep the page light

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f4f5f7}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
header{background:#1f2a44;color:#fff;padding:22px 28px}header h1{margin:0 0 4px;font-size:22px}
header .sub{opacity:.8;font-size:13px;word-break:break-all}
section,.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
section{margin:18px 0;padding:16px 20px}
h2{font-size:17px;margin:0 0 12px;border-bottom:1px solid #e3e6eb;padding-bottom:6px}
h3{font-size:14px;margin:16px 0 8px;color:#384158}
table{border-collapse:collapse;font-size:13px;margin:4px 0 8px}
th,td{padding:4px 12px 4px 8px;border-bottom:1px solid #eceef2;text-align:left;vertical-align:top}
th{background:#f7f8fa;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{background:none;font-weight:500;color:#384158;white-space:nowrap}
table.kv td{word-break:break-all}.na{color:#8a93a6;font-style:italic}
.cards{display:flex;flex-wrap:wrap;gap:12px}.card{padding:10px 16px;min-width:140px}
.card .v{font-size:20px;font-weight:600}.card .k{font-size:12px;color:#5b6478}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:6px 18px}
.figs{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:0;max-width:100%}figure img{max-width:100%;height:auto;border:1px solid #e3e6eb}
figcaption{font-size:12px;color:#5b6478}
"""


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)



def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def na(what: str = "not available") -> str:
    return f'<p class="na">{esc(what)}</p>'


def fmt(v: Any) -> str:
    if v is None:
        return '<span class="na">n/a</span>'
    if isinstance(v, bool) or not is_number(v):
        return esc(v)
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.1f}"


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{fmt(c)}</td>' if (is_number(c) or c is None)
                         else f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def raw(v: Any) -> str:
    """A config/environment value as YAML would show it."""
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def kv_table(rows: list[list[Any]]) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(raw(v))}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def png_uri(data: bytes) -> str | None:
    """data: URI of a decodable image, downscaled when large; None when it does not decode."""
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    h, w = img.shape[:2]
    if max(h, w) > MAX_SIDE:
        s = MAX_SIDE / max(h, w)
        img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".png", img)
        data = buf.tobytes() if ok else data
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(data: bytes, caption: str, width: int | None = None) -> str:
    uri = png_uri(data)
    if uri is None:
        return na(f"{caption}: image does not decode")
    style = f' style="width:{width}px"' if width else ""
    return (f'<figure><img src="{uri}" alt="{esc(caption)}"{style}>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def section(title: str, render, *args) -> str:
    """One <section>; a part that cannot be rendered says so instead of failing the page."""
    try:
        body = render(*args)
    except Exception as e:  # noqa: BLE001 - a report of a broken run must still render
        body = na(f"not available (could not render: {type(e).__name__}: {e})")
    return f"<section><h2>{esc(title)}</h2>{body}</section>"


def fig_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()
