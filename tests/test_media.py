"""Real-world images and videos as a person sees them (issue 19, items 1–4 and 10).

Every input is hand-made here with Pillow or PyAV and read through the training loader
(:func:`load_image`, :func:`load_video_frames`) and the chat server's decoder
(:func:`decode_image` via :func:`parse_chat_request`); both must give the same, expected pixels.
"""

from __future__ import annotations

import base64
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmalign.data.media import (
    MAX_IMAGE_PIXELS,
    WHITE,
    ImageProcessorConfig,
    MediaError,
    check_image_size,
    load_image,
    load_video_frames,
    normalize_image,
    process_image,
    sample_frame_indices,
    to_rgb,
)
from mmalign.serve.protocol import RequestError, ServeLimits, parse_chat_request

HALF = (0.5, 0.5, 0.5)


def _server_image(data: bytes, limits: ServeLimits | None = None) -> Image.Image:
    """The chat server's reading of an image file's bytes (a data URL with the file's MIME type)."""
    magic = {
        b"\x89PNG": "png",
        b"\xff\xd8\xff": "jpeg",
        b"GIF8": "gif",
        b"RIFF": "webp",
        b"II*": "tiff",
        b"MM": "tiff",
    }
    mime = "image/" + next(kind for head, kind in magic.items() if data.startswith(head))
    url = f"data:{mime};base64," + base64.b64encode(data).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    return parse_chat_request(body, ("<image>", ""), limits or ServeLimits()).images[0]


def _save(img: Image.Image, path: Path, **kw) -> bytes:
    img.save(path, **kw)
    return path.read_bytes()


# ----------------------------------------------------------------------------- 1. transparency
def _logo(mode: str) -> tuple[Image.Image, dict]:
    """A 16×16 black square logo (rows/cols 4..11) on a fully transparent background, in ``mode``."""
    inside = np.zeros((16, 16), bool)
    inside[4:12, 4:12] = True
    if mode == "RGBA":  # transparent pixels hold black RGB: the old bug made the whole image black
        arr = np.zeros((16, 16, 4), np.uint8)
        arr[..., 3] = inside * 255
        return Image.fromarray(arr, "RGBA"), {}
    if mode == "LA":
        arr = np.zeros((16, 16, 2), np.uint8)
        arr[..., 1] = inside * 255
        return Image.fromarray(arr, "LA"), {}
    if mode in ("P-index", "P-alpha", "GIF"):  # palette: index 0 transparent black, 1 opaque black
        img = Image.fromarray(inside.astype(np.uint8), "P")
        img.putpalette([0, 0, 0, 0, 0, 0])
        return img, {"transparency": bytes([0, 255]) if mode == "P-alpha" else 0}
    if mode == "L-trns":  # a grey PNG's tRNS colour (1) is transparent; the logo is 0
        return Image.fromarray(np.where(inside, 0, 1).astype(np.uint8), "L"), {"transparency": 1}
    if mode == "RGB-trns":
        arr = np.where(inside[..., None], 0, 1).repeat(3, axis=2).astype(np.uint8)
        return Image.fromarray(arr, "RGB"), {"transparency": (1, 1, 1)}
    if mode == "I;16-trns":
        return Image.fromarray(np.where(inside, 0, 1).astype(np.uint16)), {"transparency": 1}
    raise AssertionError(mode)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGBA", "PNG"), ("LA", "PNG"), ("P-index", "PNG"), ("P-alpha", "PNG"), ("GIF", "GIF"),
        ("L-trns", "PNG"), ("RGB-trns", "PNG"), ("I;16-trns", "PNG"), ("RGBA", "WEBP"),
    ],
)  # fmt: skip
def test_transparent_logo_is_composited_not_black(tmp_path, mode, fmt) -> None:
    img, kw = _logo(mode)
    path = tmp_path / f"logo.{fmt.lower()}"
    data = _save(img, path, format=fmt, **({"lossless": True} if fmt == "WEBP" else kw))
    for read in (load_image(path), _server_image(data)):  # loader and server: same normalised image
        assert read.mode == "RGBA" and read.size == (16, 16)
        white = np.asarray(to_rgb(read))
        assert (white[4:12, 4:12] == 0).all()  # the logo stays black
        outside = np.ones((16, 16), bool)
        outside[4:12, 4:12] = False
        assert (white[outside] == 255).all()  # the transparent background becomes white, not black
    assert np.array_equal(np.asarray(load_image(path, background=WHITE)), white)
    # process_image: white behind the logo in resize mode, the padding (mean) colour in pad mode
    resized = process_image(
        load_image(path), ImageProcessorConfig(size=16, mode="resize", mean=HALF, std=HALF)
    )
    torch.testing.assert_close(resized[:, 0, 0], torch.ones(3))
    torch.testing.assert_close(resized[:, 8, 8], -torch.ones(3))
    mean = (0.2, 0.4, 0.6)
    padded = process_image(load_image(path), ImageProcessorConfig(size=16, mode="pad", mean=mean, std=HALF))
    fill = torch.tensor([round(m * 255) / 255 for m in mean])
    torch.testing.assert_close(padded[:, 0, 0], (fill - torch.tensor(mean)) / 0.5)  # ≈ 0: like padding
    torch.testing.assert_close(padded[:, 8, 8], -torch.tensor(mean) / 0.5)


def test_in_memory_alpha_modes_and_partial_alpha() -> None:
    # 50 % black over white = 128 grey; premultiplied forms (RGBa, La) give the same image
    half = {
        "RGBA": Image.new("RGBA", (2, 2), (0, 0, 0, 128)),
        "RGBa": Image.new("RGBa", (2, 2), (0, 0, 0, 128)),
        "LA": Image.new("LA", (2, 2), (0, 128)),
        "La": Image.new("La", (2, 2), (0, 128)),
        "PA": Image.new("PA", (2, 2), (0, 128)),
    }
    for mode, img in half.items():
        assert to_rgb(img).getpixel((0, 0)) == (127, 127, 127), mode
        assert to_rgb(img, (0, 0, 0)).getpixel((0, 0)) == (0, 0, 0), mode
    # premultiplied colour is un-premultiplied: RGBa (50, ·, ·, 128) is straight 100 at 50 %
    assert to_rgb(Image.new("RGBa", (1, 1), (50, 0, 0, 128)), (0, 0, 0)).getpixel((0, 0))[0] == 50
    assert to_rgb(Image.new("La", (1, 1), (50, 128)), (0, 0, 0)).getpixel((0, 0))[0] == 50
    # an opaque alpha image comes back as plain RGB
    assert normalize_image(Image.new("RGBA", (2, 2), (9, 8, 7, 255))).mode == "RGB"


# ----------------------------------------------------------------------------- 2. EXIF orientation
def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def test_phone_jpeg_exif_orientation_6_is_upright(tmp_path) -> None:
    arr = np.full((40, 80, 3), 255, np.uint8)
    arr[:, :16] = (255, 0, 0)  # stored 80×40 with a red bar on the left (one JPEG block wide)
    path = tmp_path / "phone.jpg"
    data = _save(Image.fromarray(arr), path, format="JPEG", quality=95, exif=_exif(6))
    for read in (load_image(path), _server_image(data)):
        assert read.size == (40, 80)  # as a viewer shows it: 40 wide, 80 high
        got = np.asarray(read).astype(int)
        assert (np.abs(got[:14] - [255, 0, 0]) < 24).all()  # the bar is on top
        assert (got[18:] > 230).all()  # the rest white
    x = process_image(load_image(path), ImageProcessorConfig(size=8, mode="resize", mean=HALF, std=HALF))
    assert x[1, 0].max() < -0.8 and x[1, -1].min() > 0.8  # green channel: red bar top, white bottom


@pytest.mark.parametrize(("orientation", "k"), [(1, 0), (3, 2), (6, -1), (8, 1)])
@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_exif_orientation_in_every_format(tmp_path, orientation, k, fmt) -> None:
    arr = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3  # distinct pixels, lossless formats
    path = tmp_path / f"o.{fmt.lower()}"
    data = _save(
        Image.fromarray(arr),
        path,
        format=fmt,
        exif=_exif(orientation),
        **({"lossless": True} if fmt == "WEBP" else {}),
    )
    want = np.rot90(arr, k)  # 6: 90° clockwise to view, 8: 90° counter-clockwise, 3: 180°
    assert np.array_equal(np.asarray(load_image(path)), want)
    assert np.array_equal(np.asarray(_server_image(data)), want)


# ----------------------------------------------------------------------------- 3. every mode
_RAMP = np.linspace(0, 1, 18)


def _mode_cases() -> list[tuple[str, Image.Image, np.ndarray]]:
    """(name, image, expected 8-bit RGB) for a hand-made gradient in every mode Pillow opens."""
    grey = np.rint(_RAMP * 255).astype(np.uint8)
    g3 = np.repeat(grey[None, :, None], 3, axis=2)
    cases = [
        (
            "1",
            Image.fromarray(np.array([[0, 1, 0, 1]], bool)),
            np.repeat(np.array([[0, 255, 0, 255]], np.uint8)[..., None], 3, 2),
        ),
        ("L", Image.fromarray(grey[None]), g3),
        ("LA", Image.fromarray(np.stack([grey, np.full_like(grey, 255)], -1)[None], "LA"), g3),
        ("RGB", Image.fromarray(g3), g3),
        ("RGBA", Image.fromarray(np.concatenate([g3, np.full_like(g3[..., :1], 255)], -1), "RGBA"), g3),
        ("RGBX", Image.fromarray(g3).convert("RGBX"), g3),
        ("YCbCr", Image.fromarray(np.stack([grey, *[np.full_like(grey, 128)] * 2], -1)[None], "YCbCr"), g3),
        (
            "HSV",
            Image.fromarray(np.stack([np.zeros_like(grey), np.zeros_like(grey), grey], -1)[None], "HSV"),
            g3,
        ),
        # CMYK: K ramp gives the inverse grey ramp; C alone removes red
        ("CMYK", Image.fromarray(np.stack([*[np.zeros_like(grey)] * 3, grey], -1)[None], "CMYK"), 255 - g3),
        ("CMYK-C", Image.new("CMYK", (1, 1), (255, 0, 0, 0)), np.array([[[0, 255, 255]]], np.uint8)),
        # 16-bit: the declared range 0…65535 → 0…255 (Pillow's own convert clips at 255)
        ("I;16", Image.fromarray(np.rint(_RAMP * 65535).astype(np.uint16)[None]), g3),
        ("I;16B", Image.frombytes("I;16B", (18, 1), np.rint(_RAMP * 65535).astype(">u2").tobytes()), g3),
        # I and F declare no range: their own min..max is stretched, except I in 0…255 / F in [0, 1]
        ("I 16-bit data", Image.fromarray(np.rint(_RAMP * 65535).astype(np.int32)[None]), g3),
        ("I signed", Image.fromarray(np.rint(_RAMP * 2e6 - 1e6).astype(np.int32)[None]), g3),
        ("I 8-bit data", Image.fromarray(grey.astype(np.int32)[None]), g3),
        ("F [0,1]", Image.fromarray(_RAMP.astype(np.float32)[None]), g3),
        ("F any range", Image.fromarray((_RAMP * 1234.5 - 17.25).astype(np.float32)[None]), g3),
    ]
    # palette: entry i is the grey ramp's i-th value
    pal = Image.fromarray(np.arange(18, dtype=np.uint8)[None], "P")
    pal.putpalette(np.repeat(grey, 3).tolist())
    cases.append(("P", pal, g3))
    dark = Image.fromarray((_RAMP * 0.5).astype(np.float32)[None])  # F within [0, 1] keeps its level
    cases.append(
        ("F dark", dark, np.repeat(np.rint(_RAMP * 0.5 * 255).astype(np.uint8)[None, :, None], 3, 2))
    )
    return cases


@pytest.mark.parametrize(
    ("name", "img", "want"), _mode_cases(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_mode_gives_the_image_a_person_sees(name, img, want) -> None:
    got = np.asarray(to_rgb(img)).astype(int)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1, f"{name}: {got[0, :, 0]} vs {want[0, :, 0]}"
    if want.size > 3:
        assert got.min() == want.min() and got.max() == want.max()  # full tonal range, e.g. 0 and 255


def test_lab_mode_is_converted_to_srgb(tmp_path) -> None:
    """CIE L*a*b* (a LAB TIFF): a neutral L* ramp is a grey ramp from black to white; L* 50 is sRGB 119."""
    ramp = np.rint(np.linspace(0, 255, 18)).astype(np.uint8)
    arr = np.stack([ramp, np.zeros_like(ramp), np.zeros_like(ramp)], -1)[None]  # a, b = 0: neutral
    Image.fromarray(arr, "LAB").save(tmp_path / "lab.tif")
    got = np.asarray(load_image(tmp_path / "lab.tif")).astype(int)[0]
    assert got[0].max() <= 2 and got[-1].min() >= 253 and (np.diff(got[:, 1]) > 0).all()
    assert np.ptp(got, axis=1).max() <= 1  # grey
    assert abs(to_rgb(Image.new("LAB", (1, 1), (128, 128, 128))).getpixel((0, 0))[1] - 119) <= 1


def test_float_and_int_edge_values() -> None:
    f = Image.fromarray(np.array([[np.nan, -np.inf, 0.0, 0.5, 1.0, np.inf]], np.float32))
    assert np.asarray(to_rgb(f))[0, :, 0].tolist() == [0, 0, 0, 128, 255, 255]  # NaN → 0, inf clip
    assert to_rgb(Image.new("F", (2, 2), 5000.0)).getpixel((0, 0)) == (255, 255, 255)  # constant: clipped
    assert to_rgb(Image.new("I", (2, 2), -7)).getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize(
    ("name", "img", "fmt"),
    [
        ("I;16 PNG", Image.fromarray(np.rint(_RAMP * 65535).astype(np.uint16)[None]), "PNG"),
        ("I;16 TIFF", Image.fromarray(np.rint(_RAMP * 65535).astype(np.uint16)[None]), "TIFF"),
        ("I TIFF", Image.fromarray(np.rint(_RAMP * 4e5 - 1e5).astype(np.int32)[None]), "TIFF"),
        ("F TIFF", Image.fromarray((_RAMP * 3 - 1).astype(np.float32)[None]), "TIFF"),
        ("1 PNG", Image.fromarray((_RAMP > 0.5)[None]), "PNG"),
        ("CMYK TIFF", Image.fromarray(np.stack([np.zeros(18, np.uint8)] * 3 + [np.rint(_RAMP * 255).astype(np.uint8)], -1)[None], "CMYK"), "TIFF"),
        ("CMYK JPEG", Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG"),
    ],
)  # fmt: skip
def test_high_depth_and_odd_mode_files_load_with_full_range(tmp_path, name, img, fmt) -> None:
    path = tmp_path / f"m.{fmt.lower()}"
    data = _save(img, path, format=fmt)
    for read in (load_image(path), _server_image(data)):
        got = np.asarray(read).astype(int)
        assert read.mode == "RGB" and got.shape[:2] == (img.height, img.width), name
        if name == "CMYK JPEG":  # plain white paper (Adobe-inverted CMYK JPEG decoded by Pillow)
            assert got.min() >= 250
            continue
        ends = [got[0, 0].tolist(), got[0, -1].tolist()]  # the ramp's two ends: black and white
        assert ends == ([[255] * 3, [0] * 3] if name == "CMYK TIFF" else [[0] * 3, [255] * 3]), name
        step = np.diff(got[0, :, 0]) * (-1 if name == "CMYK TIFF" else 1)
        assert (step >= 0).all(), name  # monotone in between


def test_cmyk_with_an_icc_profile_goes_through_it() -> None:
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = Image.new("CMYK", (1, 1), (0, 0, 0, 0))
    img.info["icc_profile"] = b"not a profile"  # unusable: Pillow's formula, white stays white
    assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)
    img.info["icc_profile"] = srgb  # an RGB profile on CMYK data is refused by lcms: formula again
    assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)


def test_ordinary_rgb_is_unchanged() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (23, 37, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    assert np.array_equal(np.asarray(to_rgb(img)), arr)
    cfg = ImageProcessorConfig(size=32, mode="pad")
    old = Image.new("RGB", (37, 37), tuple(int(round(m * 255)) for m in cfg.mean))
    old.paste(img, (0, 7))  # the previous pipeline: pad with the mean colour, then resize
    ref = torch.from_numpy(np.asarray(old.resize((32, 32), Image.Resampling.BICUBIC), np.float32) / 255)
    ref = (ref.permute(2, 0, 1) - torch.tensor(cfg.mean).view(3, 1, 1)) / torch.tensor(cfg.std).view(3, 1, 1)
    assert torch.equal(process_image(img, cfg), ref)


# ----------------------------------------------------------------------------- 4. size guard
def _line_png(path: Path, width: int, height: int = 1) -> bytes:
    return _save(Image.new("1", (width, height), 1), path, format="PNG", optimize=True)


@pytest.mark.parametrize(("w", "h"), [(20_000, 1), (1_000_000, 1), (16_000_000, 1), (1, 20_000)])
def test_extreme_aspect_ratio_is_refused_fast_in_loader_and_server(tmp_path, w, h) -> None:
    path = tmp_path / f"line_{w}x{h}.png"
    data = _line_png(path, w, h)
    assert len(data) < 3000
    t = time.perf_counter()
    with pytest.raises(MediaError, match=rf"image .*line_{w}x{h}.png: image of {w}×{h} exceeds \d+ pixels"):
        load_image(path)
    with pytest.raises(RequestError, match="exceeds 67108864 pixels once padded") as err:
        _server_image(data)
    assert err.value.status == 413 and "messages[0].content[0]" in err.value.message
    assert time.perf_counter() - t < 1.0  # from the header: nothing decoded, nothing padded


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width × height`` 1-bit pixels and holds none (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("w", "h"), [(12_000, 12_000), (100_000, 100_000)])
def test_huge_declared_sizes_are_refused_before_decoding(tmp_path, w, h) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(w, h))
    with pytest.raises(MediaError, match=r"image .*bomb.png: .*exceeds"):
        load_image(path)  # over MAX_IMAGE_PIXELS, or over Pillow's own bomb limit
    with pytest.raises(RequestError, match="exceeds") as err:
        _server_image(path.read_bytes())
    assert err.value.status == 413


def test_size_rule_bounds_the_padded_square() -> None:
    check_image_size(4096, 2000, 4096 * 4096)  # pads to 4096² exactly: fine
    with pytest.raises(MediaError, match=r"4097×2000 exceeds 16777216 pixels once padded to a 4097×4097"):
        check_image_size(4097, 2000, 4096 * 4096)
    check_image_size(20_000, 1, 4096 * 4096, mode="resize")  # resize mode costs only w·h
    with pytest.raises(MediaError, match="exceeds 100 pixels"):
        check_image_size(20, 20, 100, mode="resize")
    assert MAX_IMAGE_PIXELS >= 8192 * 8192  # the training loader keeps ordinary large photos
    # process_image refuses before allocating the padded canvas, but not in resize mode
    with pytest.raises(MediaError, match="once padded"):
        process_image(
            Image.new("RGB", (20_000, 1)), ImageProcessorConfig(size=8, mode="pad"), max_pixels=2**20
        )
    x = process_image(
        Image.new("RGB", (20_000, 1)), ImageProcessorConfig(size=8, mode="resize"), max_pixels=2**20
    )
    assert x.shape == (3, 8, 8)
    check_image_size(5000, 3000, 4096 * 4096, max_padded_pixels=8192 * 8192)  # the server's bounds
    with pytest.raises(MediaError, match="exceeds 67108864 pixels once padded"):
        check_image_size(8193, 1, 4096 * 4096, max_padded_pixels=8192 * 8192)


def test_pad_mode_work_is_bounded_and_close_to_llava_for_large_photos() -> None:
    """Beyond PAD_EXACT_SIDE the image is box-shrunk before padding: small work, same picture."""
    import time

    from mmalign.data.media import PAD_EXACT_SIDE, expand_to_square

    cfg = ImageProcessorConfig(size=64, mode="pad", mean=HALF, std=HALF)
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)  # a 30×50 grid of flat colour blocks
    big = Image.fromarray(blocks).resize((5000, 3000), Image.Resampling.NEAREST)
    assert max(big.size) > PAD_EXACT_SIDE
    t = time.perf_counter()
    fast = process_image(big, cfg)
    spent = time.perf_counter() - t
    exact = expand_to_square(big, (128, 128, 128)).resize((64, 64), Image.Resampling.BICUBIC)
    exact_t = (torch.from_numpy(np.asarray(exact, dtype=np.float32) / 255.0).permute(2, 0, 1) - 0.5) / 0.5
    diff = (fast - exact_t).abs() * 0.5 * 255  # in grey levels
    assert diff.mean() < 2.0 and diff.max() < 40, (float(diff.mean()), float(diff.max()))
    # a thin strip within the padded bound: no 8192² canvas is made (that alone takes ~1 s here)
    t = time.perf_counter()
    strip = process_image(Image.new("RGB", (8192, 1), (255, 0, 0)), cfg)
    assert time.perf_counter() - t < 0.2 and spent < 2.0
    assert strip.shape == (3, 64, 64)
    below = Image.fromarray(blocks).resize((PAD_EXACT_SIDE, 1000), Image.Resampling.NEAREST)
    exact_below = expand_to_square(below, (128, 128, 128)).resize((64, 64), Image.Resampling.BICUBIC)
    ref = (torch.from_numpy(np.asarray(exact_below, dtype=np.float32) / 255.0).permute(2, 0, 1) - 0.5) / 0.5
    torch.testing.assert_close(process_image(below, cfg), ref)  # up to the threshold: exactly LLaVA's


# ----------------------------------------------------------------------------- 10. video by time
def _code_frame(k: int) -> np.ndarray:
    """A 96×32 frame showing ``k`` in binary as six black/white 16-pixel columns (survives H.264)."""
    arr = np.zeros((32, 96, 3), np.uint8)
    for b in range(6):
        if k >> b & 1:
            arr[:, b * 16 : (b + 1) * 16] = 255
    return arr


def _read_code(frame: Image.Image) -> int:
    arr = np.asarray(frame)
    return sum(int(arr[16, b * 16 + 8].mean() > 128) << b for b in range(6))


def write_vfr_mp4(path: Path, times: list[float]) -> None:
    """H.264 mp4 whose frame ``k`` is shown from ``times[k]`` (explicit pts, 1 ms time base)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=16)
        stream.width, stream.height, stream.pix_fmt = 96, 32, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(_code_frame(k), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


VFR_TIMES = [i / 4 for i in range(4)] + [1 + i / 16 for i in range(16)]  # 1 s at 4 fps, then 1 s at 16 fps


def test_variable_frame_rate_clip_is_sampled_by_time(tmp_path) -> None:
    import decord

    path = tmp_path / "vfr.mp4"
    write_vfr_mp4(path, VFR_TIMES)
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    stamps = reader.get_frame_timestamp(list(range(len(reader))))
    assert len(reader) == 20 and abs(stamps[4, 0] - 1.0) < 1e-3  # decord sees the rate change
    # uniform: centres of 4 equal time segments of the 2 s → 0.25 0.75 1.25 1.75 s → frames 1 3 8 16
    # (by index, 20 frames / 4 gave 2 7 12 17: 0.5 1.19 1.5 1.81 s, three of four in the last second)
    frames = load_video_frames(path, 4)
    assert [_read_code(f) for f in frames] == [1, 3, 8, 16]
    shown = [VFR_TIMES[_read_code(f)] for f in frames]
    np.testing.assert_allclose(shown, [0.25, 0.75, 1.25, 1.75], atol=1e-3)
    # fps mode: one frame each 0.5 s from the start → 0 0.5 1 1.5 s; past the end the last frame
    assert [_read_code(f) for f in load_video_frames(path, 4, fps=2)] == [0, 2, 4, 12]
    fps4 = [_read_code(f) for f in load_video_frames(path, 10, fps=4)]
    assert fps4 == [0, 1, 2, 3, 4, 8, 12, 16, 19, 19]
    # more frames than the first second holds: uniform keeps time order, repeats what is on screen
    assert [_read_code(f) for f in load_video_frames(path, 8)] == [0, 1, 2, 3, 6, 10, 14, 18]


def test_frame_sampling_by_timestamps() -> None:
    # a long clip (1 h at 30 fps) whose first frame is shown at 10 s: even over its real hour
    n = 30 * 3600
    starts = 10 + np.arange(n) / 30
    ts = np.stack([starts, starts + 1 / 30], 1)
    idx = sample_frame_indices(n, 8, timestamps=ts)
    assert idx == [int((i + 0.5) * 450 * 30) for i in range(8)]
    assert sample_frame_indices(n, 3, fps=1 / 60, timestamps=ts) == [0, 1800, 3600]
    # unusable timestamps (all zero) fall back to the average rate
    assert sample_frame_indices(100, 4, avg_fps=25, timestamps=np.zeros((100, 2))) == [12, 37, 62, 87]
    # a frame whose end time is missing: the median frame step closes the clip
    assert sample_frame_indices(4, 2, timestamps=np.array([[0, 0], [1, 0], [2, 0], [3, 0]])) == [1, 3]
    with pytest.raises(ValueError, match="fps must be > 0"):
        sample_frame_indices(10, 2, avg_fps=10, fps=0)


def test_phone_video_rotation_is_applied(tmp_path) -> None:
    """A portrait phone clip is stored sideways with a display matrix; frames come out upright."""
    import av

    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(-90)  # shown turned 90° clockwise, as a phone held upright writes it
        for _ in range(4):
            arr = np.zeros((32, 64, 3), np.uint8)
            arr[:, :16] = 255  # stored: a white bar on the left
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frame = np.asarray(load_video_frames(path, 2)[0]).astype(int)
    assert frame.shape == (64, 32, 3)  # 32 wide, 64 high: upright
    assert frame[:14].min() > 200 and frame[18:].max() < 60  # the bar on top
