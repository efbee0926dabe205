"""Galleries of a scores table: the least and most likely images as a PNG figure or an HTML page."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from PIL import Image

from jepabook.plots import use_style


def write_gallery(frame: pd.DataFrame, root: Path, path: Path, n: int = 8, title: str = "") -> None:
    """Draw the n least and n most likely ok images of a scores frame: a .png figure or a .html page.

    The .html page is self-contained (thumbnails embedded as base64 PNG).
    """
    ok = frame[frame["status"] == "ok"].sort_values("score", kind="stable")
    rows = {"least likely": ok.head(n), "most likely": ok.tail(n).iloc[::-1]}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".html":
        path.write_text(_gallery_html(rows, root, title), encoding="utf-8")
    else:
        _gallery_png(rows, root, n, title).savefig(path)


def _thumbnail(path: Path, size: int = 128) -> Image.Image:
    """The image as RGB, shrunk to fit size x size (nearest, so tiny images stay crisp)."""
    with Image.open(path) as image:
        thumb = image.convert("RGB")
    if max(thumb.size) < size:
        scale = size // max(thumb.size)
        return thumb.resize((thumb.width * scale, thumb.height * scale), Image.NEAREST)
    thumb.thumbnail((size, size))
    return thumb


def _caption(row) -> str:
    return f"#{int(row['rank'])}  {row['score']:.1f}"


def _gallery_png(rows: dict[str, pd.DataFrame], root: Path, n: int, title: str):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    use_style()
    fig = Figure(figsize=(1.5 * n, 3.9), constrained_layout=True)
    axes = fig.subplots(2, n, squeeze=False)
    for axes_row, (label, frame) in zip(axes, rows.items(), strict=True):
        for ax in axes_row:
            ax.axis("off")
        axes_row[0].text(-0.08, 0.5, label, transform=axes_row[0].transAxes, rotation=90,
                         ha="right", va="center", fontsize=10)  # fmt: skip
        for ax, (_, row) in zip(axes_row, frame.iterrows(), strict=False):
            ax.imshow(_thumbnail(root / row["path"]), interpolation="nearest")
            name = Path(row["path"]).name
            name = name if len(name) <= 18 else name[:8] + "…" + name[-9:]
            ax.set_title(f"{_caption(row)}\n{name}", fontsize=8)
    fig.suptitle(f"JEPA-SCORE {title}: least and most likely images".replace("  ", " "))
    return fig


def _gallery_html(rows: dict[str, pd.DataFrame], root: Path, title: str) -> str:
    import base64
    import html
    import io

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>JEPA-SCORE gallery {html.escape(title)}</title><style>",
        "body{font-family:sans-serif} .row{display:flex;flex-wrap:wrap;gap:12px}",
        "figure{margin:0;width:140px;font-size:12px;word-break:break-all}",
        "img{width:128px;image-rendering:pixelated}</style></head><body>",
        f"<h1>JEPA-SCORE {html.escape(title)}</h1>",
        "<p>Higher score = more likely under the encoder's learned density; rank 1 = most likely.</p>",
    ]
    for label, frame in rows.items():
        parts.append(f"<h2>{label}</h2><div class='row'>")
        for _, row in frame.iterrows():
            buffer = io.BytesIO()
            _thumbnail(root / row["path"]).save(buffer, format="PNG")
            data = base64.b64encode(buffer.getvalue()).decode("ascii")
            name = html.escape(row["path"])
            parts.append(
                f"<figure><img src='data:image/png;base64,{data}' alt='{name}'>"
                f"<figcaption>{_caption(row)}<br>score {row['score']:.4f}<br>{name}</figcaption>"
                "</figure>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
