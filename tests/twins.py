"""Format twins: each public dataset's exact file tree and file formats, synthetic content.

The real DRIVE, CHASE_DB1, STARE and HRF may not be committed (licences), so the tests write
look-alikes from `unetdist.data.ingest.synth` images: the same names, folders, containers and
pixel encodings as the official downloads (palette GIFs with DRIVE's second-observer palette,
mode "1" PNGs, gzipped P5 labels named `.ppm`, upper-case `.JPG`, RGB TIFF masks, CHASE's flat
folder), but small images so that a test stays fast. Nothing here is committed as an image.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image

from unetdist.data.ingest.synth import FundusSample, synthetic_sample

# DRIVE's 2nd_manual GIFs: indices {0, 1} with these palette entries (gray 3 and 253).
DRIVE_OBSERVER2_PALETTE = [4, 2, 4, 252, 254, 252]
# STARE's 20 labelled images (of 400), by number.
STARE_LABELLED = (1, 2, 3, 4, 5, 44, 77, 81, 82, 139, 162, 163, 235, 236, 239, 240, 255, 291,
                  319, 324)
HRF_CATEGORIES = ("dr", "g", "h")
# How the real cameras crop the disc, as (render H/W, kept rows, kept columns) in fractions of
# the rendered square's side: STARE's 605x700 frame cuts the disc at the top and bottom and
# almost at the sides (the outer ring is then mostly bright); HRF's 2336x3504 frame cuts it at
# the top and bottom only.
CROPS = {"stare": (1.0, 0.76, 0.88), "hrf": (1 / 1.2, 0.8, 1.2)}


def _sample(index: int, size: tuple[int, int], split: str = "train"):
    return synthetic_sample(index, split=split, seed=16, size=size)


def cropped_sample(index: int, like: str, side: int = 300) -> FundusSample:
    """A sample whose disc touches the top and bottom edges, cropped `like` "stare" or "hrf"."""
    aspect, rows, cols = CROPS[like]
    s = synthetic_sample(index, split="train", seed=16, size=(side, round(side / aspect)))
    h, w = round(rows * side), min(round(cols * side), s.image.shape[1])
    top, left = (side - h) // 2, (s.image.shape[1] - w) // 2
    window = (slice(top, top + h), slice(left, left + w))
    return FundusSample(s.image[window], s.vessels[window], s.fov[window])


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)
    return path


def _gzip(path: Path) -> Path:
    gz = path.with_name(path.name + ".gz")
    gz.write_bytes(gzip.compress(path.read_bytes(), mtime=0))
    path.unlink()
    return gz


def palette_gif(mask: np.ndarray, palette: list[int], path: Path) -> Path:
    """A palette GIF whose raw indices are the 0/1 mask."""
    im = Image.fromarray(mask.astype(np.uint8), "P")
    im.putpalette(palette)
    return _save(im, path, "GIF", optimize=False)


def mode1_png(mask: np.ndarray, path: Path) -> Path:
    return _save(Image.fromarray(mask.astype(bool)).convert("1"), path, "PNG")


def make_drive(root: Path, n_train: int = 20, n_test: int = 20,
               size: tuple[int, int] = (96, 88)) -> Path:
    """training/{images,1st_manual,mask}, test/{images,1st_manual,2nd_manual,mask}."""
    for split, kind, first, n in (("train", "training", 21, n_train),
                                  ("test", "test", 1, n_test)):
        for i in range(n):
            s, num = _sample(i, size, split), first + i
            base = root / kind
            _save(Image.fromarray(s.image, "RGB"), base / "images" / f"{num:02d}_{kind}.tif",
                  "TIFF")
            _save(Image.fromarray(s.vessels * 255, "L"),
                  base / "1st_manual" / f"{num:02d}_manual1.gif", "GIF")
            _save(Image.fromarray(s.fov * 255, "L"), base / "mask" / f"{num:02d}_{kind}_mask.gif",
                  "GIF")
            if split == "test":  # a second observer: slightly thinner vessels
                import cv2

                second = cv2.erode(s.vessels, np.ones((2, 2), np.uint8))
                palette_gif(second, DRIVE_OBSERVER2_PALETTE,
                            base / "2nd_manual" / f"{num:02d}_manual2.gif")
    return root


def chase_ids(children: int = 14) -> list[str]:
    return [f"Image_{c:02d}{eye}" for c in range(1, children + 1) for eye in "LR"]


def make_chase(root: Path, repackaged: bool = False, children: int = 14,
               size: tuple[int, int] = (96, 100)) -> Path:
    """The official flat folder (or images/, 1st_label/, 2nd_label/): JPEG + mode "1" PNGs."""
    dirs = ({"img": root / "images", "1st": root / "1st_label", "2nd": root / "2nd_label"}
            if repackaged else {"img": root, "1st": root, "2nd": root})
    for i, stem in enumerate(chase_ids(children)):
        s = _sample(i, size)
        _save(Image.fromarray(s.image, "RGB"), dirs["img"] / f"{stem}.jpg", "JPEG", quality=95)
        mode1_png(s.vessels, dirs["1st"] / f"{stem}_1stHO.png")
        mode1_png(s.vessels, dirs["2nd"] / f"{stem}_2ndHO.png")
    return root


def _ppm(img: Image.Image, path: Path, gz: bool) -> Path:
    buf = io.BytesIO()
    img.save(buf, format="PPM")  # P6 for RGB, P5 for L: STARE's labels are P5 named .ppm
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return _gzip(path) if gz else path


def make_stare(root: Path, unlabelled: int = 2, size: tuple[int, int] = (90, 104),
               cropped: int = 0) -> Path:
    """stare-images/imNNNN.ppm.gz, labels-ah/imNNNN.ah.ppm.gz, labels-vk/imNNNN.vk.ppm.

    The first `cropped` images have their disc cut at the top and bottom (`CROPS["stare"]`).
    """
    numbers = list(STARE_LABELLED) + [400 - k for k in range(unlabelled)]
    for i, num in enumerate(numbers):
        s = (cropped_sample(i, "stare", round(size[0] / CROPS["stare"][1])) if i < cropped
             else _sample(i, size))
        stem = f"im{num:04d}"
        _ppm(Image.fromarray(s.image, "RGB"), root / "stare-images" / f"{stem}.ppm", gz=True)
        if num in STARE_LABELLED:
            label = Image.fromarray(s.vessels * 255, "L")
            _ppm(label, root / "labels-ah" / f"{stem}.ah.ppm", gz=True)
            _ppm(label, root / "labels-vk" / f"{stem}.vk.ppm", gz=i % 2 == 0)
    return root


def hrf_ids(per_category: int = 15) -> list[str]:
    return [f"{n:02d}_{c}" for c in HRF_CATEGORIES for n in range(1, per_category + 1)]


def make_hrf(root: Path, per_category: int = 15, size: tuple[int, int] = (96, 144)) -> Path:
    """images/NN_x.jpg (some .JPG), manual1/NN_x.tif, mask/NN_x_mask.tif (RGB, equal channels)."""
    for i, stem in enumerate(hrf_ids(per_category)):
        s = _sample(i, size)
        ext = ".JPG" if stem.endswith("_h") else ".jpg"  # the official mix of cases
        _save(Image.fromarray(s.image, "RGB"), root / "images" / f"{stem}{ext}", "JPEG",
              quality=95)
        _save(Image.fromarray(s.vessels * 255, "L"), root / "manual1" / f"{stem}.tif", "TIFF")
        rgb = np.repeat((s.fov * 255)[..., None], 3, axis=2)
        _save(Image.fromarray(rgb, "RGB"), root / "mask" / f"{stem}_mask.tif", "TIFF")
    return root


# RITE's av/*.png colours (RGB), written here independently of unetdist's writer.
RITE_AV_COLOURS = {"background": (0, 0, 0), "artery": (255, 0, 0), "vein": (0, 0, 255),
                   "crossing": (0, 255, 0), "uncertain": (255, 255, 255)}


def _av_sample(index: int, size: tuple[int, int], split: str = "train"):
    from unetdist.data.ingest.synth_av import synthetic_av_sample

    return synthetic_av_sample(index, split=split, seed=16, size=size)


def av_rgb(labels: np.ndarray, uncertain: np.ndarray | None = None) -> np.ndarray:
    """Colour-code a 0..3 (background, artery, vein, crossing) label map; uncertain white."""
    table = np.array([RITE_AV_COLOURS[k] for k in ("background", "artery", "vein", "crossing")],
                     dtype=np.uint8)
    rgb = table[labels]
    if uncertain is not None:
        rgb[uncertain > 0] = RITE_AV_COLOURS["uncertain"]
    return rgb


def make_rite(root: Path, n_train: int = 20, n_test: int = 20, size: tuple[int, int] = (96, 88),
              fov_masks: bool = False) -> Path:
    """AV_groundTruth/{training,test}/{images,av,vessel}: DRIVE's RGB TIFFs, RGB PNG A/V maps
    (red artery, blue vein, green crossing, white uncertain), 0/255 vessel PNGs. `fov_masks`
    adds DRIVE's mask GIFs as AV_groundTruth/<split>/mask/NN_<kind>_mask.gif."""
    for split, kind, first, n in (("train", "training", 21, n_train),
                                  ("test", "test", 1, n_test)):
        base = root / "AV_groundTruth" / kind
        for i in range(n):
            s, stem = _av_sample(i, size, split), f"{first + i:02d}_{kind}"
            _save(Image.fromarray(s.image, "RGB"), base / "images" / f"{stem}.tif", "TIFF")
            _save(Image.fromarray(av_rgb(s.labels, s.uncertain), "RGB"),
                  base / "av" / f"{stem}.png", "PNG")
            _save(Image.fromarray((s.labels > 0).astype(np.uint8) * 255, "L"),
                  base / "vessel" / f"{stem}.png", "PNG")
            if fov_masks:
                _save(Image.fromarray(s.fov * 255, "L"), base / "mask" / f"{stem}_mask.gif",
                      "GIF")
    return root


def make_av_jpeg_folders(root: Path, n: int = 6, size: tuple[int, int] = (96, 88),
                         suffix: str = "--av", quality: int = 90,
                         subsampling: int = 0) -> Path:
    """The generic-folders A/V case of issue 25: images/NN.png, and beside images/ the masks
    as JPEG with a suffix in the name, masks/NN<suffix>.jpg, red artery, blue vein, green
    crossing, black background (no uncertain colour: its pixels keep their class). JPEG
    with full chroma (`subsampling=0`, quality 90) leaves most pixels near, not at, the
    table's colours, each still nearest its own class's; `subsampling=2` (4:2:0, PIL's
    default) smears 1-2 px vessels across classes, a harder case."""
    for i in range(n):
        s, stem = _av_sample(i, size), f"{i + 1:02d}"
        _save(Image.fromarray(s.image, "RGB"), root / "images" / f"{stem}.png", "PNG")
        _save(Image.fromarray(av_rgb(s.labels), "RGB"), root / "masks" / f"{stem}{suffix}.jpg",
              "JPEG", quality=quality, subsampling=subsampling)
    return root


MULTILABEL_NAMES = ("vessel", "artery", "vein")  # overlapping: a crossing is artery and vein


def multilabel_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The three overlapping {0,1} masks of a 0..3 (background, artery, vein, crossing) map."""
    return {"vessel": (labels > 0).astype(np.uint8),
            "artery": np.isin(labels, (1, 3)).astype(np.uint8),
            "vein": np.isin(labels, (2, 3)).astype(np.uint8)}


def make_multilabel_folders(root: Path, n_train: int = 8, n_test: int = 4,
                            size: tuple[int, int] = (96, 88)) -> Path:
    """A multi-label dataset as the `folders` layout reads one: images/NN.png and
    labels/<label>/NN.png per label (vessel, artery, vein: a crossing pixel is in all three),
    the same under test_images/ and test_labels/. Masks are 0/255 PNGs except vein, stored
    0/1 as some tools write them (the binary rule takes either)."""
    for split, images, labels, first, n in (("train", "images", "labels", 1, n_train),
                                            ("test", "test_images", "test_labels", 41, n_test)):
        for i in range(n):
            s, stem = _av_sample(i, size, split), f"{first + i:02d}"
            _save(Image.fromarray(s.image, "RGB"), root / images / f"{stem}.png", "PNG")
            for name, mask in multilabel_masks(s.labels).items():
                scale = 1 if name == "vein" else 255
                _save(Image.fromarray(mask * scale, "L"), root / labels / name / f"{stem}.png",
                      "PNG")
    return root
