"""`unetdist inspect`: what is in a shard folder, as one HTML page and a text summary.

Per split: counts, sizes, vessel fraction; the FOV source; the training fingerprint (the same
`fingerprint` that `plan` decides from); a montage of thumbnails with the label overlaid; and
the images that stand out: size, brightness or label fraction beyond OUTLIER_MADS robust
standard deviations (1.4826 x MAD) and MIN_RELATIVE from the median over all splits.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from unetdist.atomic import write_atomic
from unetdist.data.codec import encode_png
from unetdist.data.manifest import read_manifest, split_entries, split_names
from unetdist.plan.fingerprint import Fingerprint, ImageStats, fingerprint, scan_split

OUTLIER_MADS = 2.5
MIN_RELATIVE = 0.1
THUMB = 112  # px, the longer side of a thumbnail
COLUMNS = 8
MAX_THUMBS = 48  # montage cells, spread over the splits
OVERLAY = np.array([255, 40, 40], np.float32)  # label colour on the thumbnails


@dataclass
class Outlier:
    key: str
    split: str
    what: str  # size | brightness | label fraction
    value: float
    median: float


def thumbnail(d: dict) -> np.ndarray:
    """RGB thumbnail with the label in red (half transparent) and the FOV outside dimmed."""
    rgb, label, fov = d["image"], d["label"], d["fov"]
    f = THUMB / max(rgb.shape[:2])
    size = (max(1, round(rgb.shape[1] * f)), max(1, round(rgb.shape[0] * f)))
    img = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    lab = cv2.resize(label.astype(np.float32), size, interpolation=cv2.INTER_AREA)[..., None]
    inside = cv2.resize(fov.astype(np.float32), size, interpolation=cv2.INTER_AREA)[..., None]
    img = img * (1 - 0.5 * lab) + OVERLAY * 0.5 * lab
    img *= 0.4 + 0.6 * inside
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def montage(thumbs: list[np.ndarray]) -> np.ndarray:
    rows = max(1, -(-len(thumbs) // COLUMNS))
    cell = THUMB + 4
    out = np.full((rows * cell, min(len(thumbs), COLUMNS) * cell, 3), 255, np.uint8)
    for i, t in enumerate(thumbs):
        y, x = (i // COLUMNS) * cell + 2, (i % COLUMNS) * cell + 2
        out[y:y + t.shape[0], x:x + t.shape[1]] = t
    return out


def outliers(stats: list[ImageStats]) -> list[Outlier]:
    found = []
    for what, values in (("size (px)", [s.height * s.width for s in stats]),
                         ("brightness", [s.brightness for s in stats]),
                         ("label fraction", [s.label_fraction for s in stats])):
        v = np.asarray(values, np.float64)
        med = float(np.median(v))
        spread = 1.4826 * float(np.median(np.abs(v - med)))
        # and 10% off the median: in a uniform set a tiny MAD would flag noise
        tol = max(OUTLIER_MADS * spread, MIN_RELATIVE * abs(med))
        found += [Outlier(s.key, s.split, what, float(x), med)
                  for s, x in zip(stats, v) if abs(x - med) > tol]
    return found


def split_rows(stats: dict[str, list[ImageStats]], manifest: dict) -> list[list[str]]:
    rows = []
    for split, ss in stats.items():
        shards = split_entries(manifest, split)
        hs, ws = [s.height for s in ss], [s.width for s in ss]
        vessel = sum(s.label_fraction * s.fov_pixels for s in ss) / max(
            sum(s.fov_pixels for s in ss), 1)
        rows.append([split, str(len(ss)), f"{min(hs)}-{max(hs)} x {min(ws)}-{max(ws)}",
                     f"{np.median([s.fov_diameter for s in ss]):.0f}", f"{vessel:.3f}",
                     f"{1 - vessel:.3f}", str(len(shards)),
                     f"{sum(sh['bytes'] for sh in shards) / 2**20:.1f}"])
    return rows


SPLIT_HEAD = ["split", "images", "size (h x w px)", "FOV diameter (px)", "vessel fraction",
              "background fraction", "shards", "MiB"]
OUTLIER_HEAD = ["image", "split", "what", "value", "median"]


def _table(tid: str, head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f'<table id="{tid}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _outlier_rows(found: list[Outlier]) -> list[list[str]]:
    return [[o.key, o.split, o.what, f"{o.value:.4g}", f"{o.median:.4g}"] for o in found]


def page(root: str, fov_line: str, rows: list[list[str]], fp: Fingerprint,
         found: list[Outlier]) -> str:
    name = html.escape(Path(root).name)
    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:"
             "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:"
             "right}th{background:#eee}img{max-width:100%}")
    outlier_html = (_table("outliers", OUTLIER_HEAD, _outlier_rows(found)) if found else
                    f"<p id='outliers'>none beyond {OUTLIER_MADS} MAD and {MIN_RELATIVE:.0%} of the "
                    "median</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>inspect {name}</title>"
            f"<style>{style}</style></head><body><h1>Shards {name}</h1>"
            f"<p>{html.escape(str(Path(root).absolute()))}</p>"
            f"<h2>Splits</h2>{_table('splits', SPLIT_HEAD, rows)}"
            f"<p id='fov-source'>{html.escape(fov_line)}</p>"
            f"<h2>Training fingerprint</h2><pre id='fingerprint'>"
            f"{html.escape(chr(10).join(fp.lines()))}</pre>"
            f"<h2>Images that stand out</h2>{outlier_html}"
            f"<h2>Montage</h2><p>label in red, outside the FOV dimmed</p>"
            f"<img id='montage' src='montage.png' alt='thumbnails with label overlays'>"
            "</body></html>")


def _fov_line(manifest: dict) -> str:
    counts = manifest.get("fov_sources") or {}
    given = "given (FOV files)" if manifest.get("fov_source") == "file" else (
        "estimated from the images" if manifest.get("fov_source") == "estimated"
        else "none (the whole image)")
    detail = ", ".join(f"{k} {v}" for k, v in counts.items())
    return f"FOV source: {given}" + (f" ({detail})" if detail else "")


def run_inspect(root: str, out: str | None = None) -> Path:
    """Write DIR/index.html + montage.png, print the summary; returns the page's path."""
    manifest = read_manifest(root)
    splits = split_names(manifest)
    per_split = max(1, MAX_THUMBS // max(len(splits), 1))
    thumbs: list[np.ndarray] = []
    counts = {s: 0 for s in splits}

    def keep(d: dict, s: ImageStats) -> None:
        if counts[s.split] < per_split:
            thumbs.append(thumbnail(d))
            counts[s.split] += 1

    stats: dict[str, list[ImageStats]] = {}
    fp = None
    for split in splits:
        if split == "train":
            fp = fingerprint(root, on_sample=keep)
            stats[split] = fp.images
        else:
            stats[split] = scan_split(root, split, calibre_images=0, on_sample=keep)
    if fp is None:  # no training split: fingerprint the first one there is
        fp = Fingerprint(str(root), splits[0], str(manifest.get("fov_source")), stats[splits[0]])
    found = outliers([s for ss in stats.values() for s in ss])
    folder = Path(out) if out else Path.cwd() / f"inspect-{Path(str(root).rstrip('/')).name}"
    rows, fov_line = split_rows(stats, manifest), _fov_line(manifest)
    write_atomic(folder / "montage.png", encode_png(montage(thumbs)))
    write_atomic(folder / "index.html", page(root, fov_line, rows, fp, found))
    _print_summary(root, rows, fov_line, fp, found)
    print(f"wrote {folder / 'index.html'}")
    return folder / "index.html"


def _print_summary(root: str, rows: list[list[str]], fov_line: str, fp: Fingerprint,
                   found: list[Outlier]) -> None:
    print(f"shards {Path(root).absolute()}")
    for r in rows:
        print(f"  {r[0]:5s} {r[1]:>4s} images, {r[2]} px, FOV {r[3]} px, vessel {r[4]}, "
              f"{r[6]} shards, {r[7]} MiB")
    print(f"  {fov_line}")
    for line in fp.lines():
        print(line)
    print(f"images that stand out (> {OUTLIER_MADS} MAD and {MIN_RELATIVE:.0%} from the median): "
          f"{len(found)}")
    for o in found:
        print(f"  {o.split}/{o.key}: {o.what} {o.value:.4g} (median {o.median:.4g})")
