"""Our own decoders/encoders for shard members: PNG and JSON only, never pickles.

Shards come from shared storage that others can write, so we decode only the members we know
(`image.png`, `label.png`, `classes.png` or `channel<c>.png`, `fov.png`, `label2.png`, `meta.json`) and ignore
everything else.

A sample's label is one of three forms. `label.png` is a binary mask stored 0/255 (viewable);
`classes.png` is a class-index map (0..K-1, 255 = ignore) of a shard folder whose manifest holds
a class table with more than two classes; `channel1.png` .. `channelC.png` are a multilabel
table's binary masks, one per label (0/255, viewable). Each decodes to one uint8 map `label`:
class indices ({0, 1} for a binary mask), or the labels' bit mask (`classes.to_bitmask`: label
c is bit c-1), so every reader downstream handles one form.
A meta.json is typed before use (`read_meta`): its sizes reach OpenCV (evaluate resizes
predictions back to them), so a size that is not a positive int within MAX_PIXELS is refused.
"""

from __future__ import annotations

import cv2
import numpy as np

from unetdist.data import jsonsafe
from unetdist.data.classes import MAX_LABELS, ClassTable, to_bitmask
from unetdist.errors import DataError

MASK_MEMBERS = ("label", "fov", "label2")  # binary masks, stored 0/255
IGNORE = 255  # the class index of "do not score" pixels in a classes.png map
CHANNEL_MEMBER = "channel{}.png"  # multilabel label c (1-based), a 0/255 mask
MAX_PIXELS = 64_000_000  # per image, read and written: HRF's 8 MP fit; a 100k x 100k bomb does not


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG of an RGB (H,W,3) or gray (H,W) uint8 array."""
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8, got {array.dtype}")
    img = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def encode_mask(mask01: np.ndarray) -> bytes:
    """A {0,1} mask stored as 0/255 gray PNG (viewable in any image viewer)."""
    return encode_png((mask01 > 0).astype(np.uint8) * 255)


def encode_classes(index_map: np.ndarray) -> bytes:
    """A class-index map (0..K-1, IGNORE for pixels that score nothing) as a gray PNG."""
    return encode_png(np.ascontiguousarray(index_map, dtype=np.uint8))


def encode_label(label: np.ndarray, table: ClassTable | None) -> list[tuple[str, bytes]]:
    """A sample's label members (without the `<id>.` prefix): `label.png` for a binary table
    (or none), `classes.png` for a multi-class one, `channel<c>.png` for a multilabel one."""
    if table is None or table.is_binary:
        return [("label.png", encode_mask(label))]
    if table.is_multilabel:
        return encode_channels(label, len(table.label_names))
    return [("classes.png", encode_classes(label))]


def encode_channels(bitmask: np.ndarray, num_labels: int) -> list[tuple[str, bytes]]:
    """A multilabel bit mask as (member, 0/255 PNG) per label, label 1 first."""
    return [(CHANNEL_MEMBER.format(c + 1), encode_mask((bitmask >> c) & 1))
            for c in range(num_labels)]


def _channel_count(sample: dict) -> int:
    n = 0
    while CHANNEL_MEMBER.format(n + 1) in sample:
        n += 1
    return n


def _decode_channels(sample: dict, where: str) -> np.ndarray | None:
    """The bit mask of the channel<c>.png members (None without any); they must run from
    channel1 without a gap and stay within MAX_LABELS."""
    n = 0
    while CHANNEL_MEMBER.format(n + 1) in sample and n <= MAX_LABELS:
        n += 1
    if n == 0:
        return None
    if n > MAX_LABELS:
        raise DataError(f"{where}: more than {MAX_LABELS} channel<c>.png label members")
    masks = [decode_png(sample[CHANNEL_MEMBER.format(c + 1)], color=False,
                        what=f"{where} channel{c + 1}") for c in range(n)]
    if any(m.shape != masks[0].shape for m in masks):
        raise DataError(f"{where}: channel<c>.png label masks differ in size")
    return to_bitmask(np.stack(masks) > 127)


def decode_png(data: bytes, *, color: bool, what: str = "PNG") -> np.ndarray:
    arr = np.frombuffer(data, dtype=np.uint8)
    flag = cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
    img = cv2.imdecode(arr, flag) if arr.size else None
    if img is None:
        raise DataError(f"cannot decode {what}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if color else img


def decode_sample(sample: dict) -> dict:
    """webdataset raw sample (bytes per member) -> arrays.

    Returns key, image (H,W,3 uint8 RGB), label (H,W uint8 class indices: {0,1} from label.png;
    a bit mask from channel<c>.png, with "channels": how many),
    fov (H,W uint8 in {0,1}), label2 when present, meta (dict). Raises DataError naming the key and member on anything malformed.
    """
    key = sample.get("__key__", "?")
    where = f"sample {key!r}" + (f" in {sample['__url__']}" if "__url__" in sample else "")
    for m in ("image.png", "fov.png"):
        if m not in sample:
            raise DataError(f"{where}: member {m} missing")
    channels = _decode_channels(sample, where)
    if ("label.png" in sample) + ("classes.png" in sample) + (channels is not None) != 1:
        raise DataError(f"{where}: needs exactly one label: label.png, classes.png or "
                        "channel1.png ..")
    out = {"key": key, "image": decode_png(sample["image.png"], color=True, what=f"{where} image")}
    for m in MASK_MEMBERS:
        if f"{m}.png" in sample:
            out[m] = (decode_png(sample[f"{m}.png"], color=False, what=f"{where} {m}") > 127)
            out[m] = out[m].astype(np.uint8)
    if "classes.png" in sample:
        out["label"] = decode_png(sample["classes.png"], color=False, what=f"{where} classes")
    if channels is not None:
        out["label"], out["channels"] = channels, _channel_count(sample)
    if out["label"].shape != out["image"].shape[:2] or out["fov"].shape != out["image"].shape[:2]:
        raise DataError(f"{where}: image/label/fov sizes differ")
    out["meta"] = read_meta(sample["meta.json"], where) if "meta.json" in sample else {}
    return out


def check_label(decoded: dict, table: ClassTable, where: str) -> None:
    """DataError unless the decoded label fits the shard folder's TABLE: the member form its
    mode writes (channel<c>.png, one per label, for multilabel) and only values the table has.
    A class index past the table would reach the loss as an out-of-range target (on CUDA a
    device-side assert), a missing label channel would train as all negative."""
    label = decoded["label"]
    if table.is_multilabel != ("channels" in decoded) or (
            table.is_multilabel and decoded["channels"] != len(table.label_names)):
        have = (f"{decoded['channels']} channel<c>.png masks" if "channels" in decoded
                else "a label.png or classes.png map")
        raise DataError(f"{where}: {have}, but the shards' table is {table.describe()}")
    bad = ~table.valid_values()[label]
    if bad.any():
        values = np.unique(label[bad])[:5].tolist()
        raise DataError(f"{where}: label values {values} are not in the shards' table "
                        f"({table.describe()})")


def _is_side(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_PIXELS


def read_meta(data: bytes, where: str) -> dict:
    """A sample's meta.json as a dict whose `height`/`width`, when present, are both there and
    positive ints of at most MAX_PIXELS pixels together (DataError naming WHERE otherwise)."""
    meta = jsonsafe.loads(data, f"{where}: meta.json", max_bytes=jsonsafe.META_BYTES)
    if not isinstance(meta, dict):
        raise DataError(f"{where}: meta.json is not a JSON object")
    if "height" in meta or "width" in meta:
        h, w = meta.get("height"), meta.get("width")
        if not (_is_side(h) and _is_side(w)):
            raise DataError(f"{where}: meta.json width {repr(w)[:24]}, height {repr(h)[:24]}: "
                            "expected positive integers")
        if h * w > MAX_PIXELS:
            raise DataError(f"{where}: meta.json records {w}x{h} pixels, more than the "
                            f"{MAX_PIXELS} allowed; not decoded")
    return meta
