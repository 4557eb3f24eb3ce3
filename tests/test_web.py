"""``facexpr serve``: the server-side workspace directly, then the page in a real headless browser.

The browser tests start ``facexpr serve`` in a subprocess on a free port of 127.0.0.1 and drive
Debian's chromium through chromedriver with selenium, as a person would: upload, press a button,
wait for the result, download it. Each state is saved as a PNG screenshot in the test's temp
folder (and copied to ``$FACEXPR_WEB_SHOTS`` when that is set) so a person can look at them.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facexpr.errors import ConfigError, ImageReadError, NoFaceError
from facexpr.expression import AU_NAMES
from facexpr.imageio import load_image
from facexpr.pipeline.video import VideoError, probe, read_frames
from facexpr.web.workspace import Limits, Upload, Workspace, draw_faces, face_at

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: A portrait with a neutral mouth, so "happy" visibly changes it.
PORTRAIT = "ref_female_074934.jpg"
UPLOAD_LIMIT_MB = 1


def portrait_path(portraits: list[Path]) -> Path:
    named = [p for p in portraits if p.name == PORTRAIT]
    return named[0] if named else portraits[0]


def hundred_megapixel_png(path: Path, width: int = 12_000, height: int = 9_000) -> Path:
    """A tiny file whose header claims width x height pixels (the data is never decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def noise_png(path: Path, side: int = 900) -> Path:
    """An incompressible PNG (~2.4 MB), over the browser tests' 1 MB upload limit."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return path


def received(ws: Workspace, source: Path, name: str | None = None) -> Upload:
    """``source`` as if the page had just uploaded it: a copy in the server's cache."""
    folder = ws.cache / f"u{time.monotonic_ns()}"
    folder.mkdir()
    dst = folder / source.name
    shutil.copyfile(source, dst)
    return Upload(dst, name or source.name)


# -- the workspace, without a browser ----------------------------------------------------------

def test_uploads_are_checked_before_anything_is_read(tmp_path):
    ws = Workspace(limits=Limits(max_upload_bytes=int(0.1 * 1024 * 1024)), root=tmp_path)
    try:
        v = ws.visitor("tab1")
        outside = tmp_path / "secret.jpg"
        outside.write_bytes(b"not for the page")
        with pytest.raises(ImageReadError, match="not a file uploaded to this page"):
            ws.open_photo(v, Upload(outside, "x.jpg"))
        with pytest.raises(ImageReadError, match="not a file uploaded to this page"):
            ws.open_photo(v, Upload(ws.cache / ".." / ".." / "secret.jpg", "x.jpg"))
        assert outside.read_bytes() == b"not for the page"  # neither moved nor deleted

        big = received(ws, noise_png(tmp_path / "big.png", 300), "holiday.png")
        with pytest.raises(ImageReadError, match=r"holiday.png: 0.3 MB is over this page's 0.1 MB upload limit"):
            ws.open_photo(v, big)
        assert not big.path.exists()

        huge = received(ws, hundred_megapixel_png(tmp_path / "huge.png"), "panorama.png")
        with pytest.raises(ImageReadError) as err:
            ws.open_photo(v, huge)
        assert "panorama.png: 12000x9000 = 108 MP is larger than the 100 MP limit" in str(err.value)
        assert str(ws.root) not in str(err.value)  # the server's paths never reach the page

        junk = tmp_path / "junk.jpg"
        junk.write_bytes(b"GIF89a but not really" * 10)
        with pytest.raises(ImageReadError, match="^notes.jpg: not a supported image"):
            ws.open_photo(v, received(ws, junk, "notes.jpg"))
        with pytest.raises(ConfigError, match="upload a photo first"):
            ws.edit(v, "emotion", "0", emotion="happy")
    finally:
        ws.close()
    assert not ws.root.exists()


def test_one_analysis_per_upload_then_edits_downloads_and_animation(portraits, misc, tmp_path):
    ws = Workspace(root=tmp_path)
    try:
        editor, _ = ws.editor()
        calls = []
        analyse = editor.faces
        editor.faces = lambda rgb: calls.append(1) or analyse(rgb)  # type: ignore[method-assign]
        v = ws.visitor("tab1")
        source = portrait_path(portraits)
        photo = ws.open_photo(v, received(ws, source))
        assert len(photo.faces) == 1 and photo.loaded.path.parent == v.folder
        rgb = load_image(source).rgb

        happy = ws.edit(v, "emotion", "0", emotion="happy", intensity=0.8)
        assert happy.image.shape == rgb.shape and (happy.image != rgb).any()
        assert happy.targets[0][AU_NAMES.index("AU12")] > photo.own_aus[0][AU_NAMES.index("AU12")] + 1

        sliders = ws.pick_face(v, "0")
        k = AU_NAMES.index("AU26")
        sliders[k] += 2.0
        jaw = ws.edit(v, "aus", "0", sliders=sliders)
        expected = photo.own_aus[0].copy()
        expected[k] = min(5.0, expected[k] + 2.0)
        np.testing.assert_allclose(jaw.targets[0], expected, atol=1e-5)  # untouched AUs stay the face's own

        ws.set_reference(v, received(ws, misc / "single_face.jpg"))
        like = ws.edit(v, "reference", "0")
        np.testing.assert_allclose(like.targets[0], v.reference.aus)
        assert calls == [1]  # three edits and a reference, one analysis of the photo

        png, jpg = ws.downloads(v)
        assert ws.downloads(v) == [png, jpg]  # written once per edit
        np.testing.assert_array_equal(np.asarray(Image.open(png)), like.image)
        with Image.open(jpg) as out, Image.open(source) as src:
            assert out.size == src.size and out.quantization == src.quantization

        gif = ws.animate(v, frames=4, back=True, fmt="gif")
        with Image.open(gif) as anim:
            assert anim.n_frames == 6 and max(anim.size) <= 720

        with pytest.raises(NoFaceError, match="no face found in mountain.jpg"):
            ws.open_photo(v, received(ws, misc / "free-mountain-vector-01.jpg", "mountain.jpg"))
        assert v.photo is None and not png.exists()

        folder = v.folder
        ws.end("tab1")
        assert not folder.exists()
    finally:
        ws.close()
    assert not ws.root.exists()


def test_video_tab_reenacts_the_cached_photo_and_edits_videos(portraits, misc, tmp_path):
    small = tmp_path / "portrait-384.jpg"
    with Image.open(portrait_path(portraits)) as im:
        im.convert("RGB").resize((384, 384 * im.height // im.width)).save(small, quality=92)
    ws = Workspace(root=tmp_path)
    try:
        v = ws.visitor("tab1")
        editor, _ = ws.editor()
        photo = ws.open_photo(v, received(ws, small))
        calls = []
        analyse = editor.analyzer.analyze
        editor.analyzer.analyze = lambda *a, **k: calls.append(1) or analyse(*a, **k)  # type: ignore[method-assign]

        with pytest.raises(ConfigError, match="upload a driving video first"):
            ws.reenact(v)
        clip = ws.open_video(v, received(ws, misc / "single_face.mp4", "talking.mp4"))
        assert clip.path.parent == v.folder and clip.info.fps == 30.0
        ticks = []
        report = ws.reenact(v, progress=lambda done, total: ticks.append((done, total)))
        assert report.path.parent == v.folder and report.path.suffix == ".mp4"
        driving_frames = sum(1 for _ in read_frames(misc / "single_face.mp4"))
        out = list(read_frames(report.path))
        assert len(out) == report.frames == driving_frames
        h, w = photo.rgb.shape[:2]
        assert probe(report.path).size == (w - w % 2, h - h % 2)
        assert ticks[-1][0] == driving_frames and len(ticks) == driving_frames
        assert calls == []  # the photo's cached analysis is reused

        with pytest.raises(ConfigError, match="press an emotion button first"):
            ws.edit_video(v)
        ws.open_video(v, received(ws, misc / "no_face.mp4", "landscape.mp4"))
        assert not clip.path.exists()  # the previous upload is replaced
        with pytest.raises(NoFaceError, match="no face found in any frame of the video"):
            ws.edit_video(v, emotion="happy", intensity=0.8)
        assert report.path.exists()  # a failed job keeps the last result
        assert [p for p in v.folder.iterdir() if p.suffix == ".mp4" and p.name.startswith(".")] == []
    finally:
        ws.close()
    assert not ws.root.exists()


def test_video_uploads_are_checked(misc, tmp_path):
    ws = Workspace(limits=Limits(max_upload_bytes=200_000, max_video_seconds=2.0), root=tmp_path)
    try:
        v = ws.visitor("tab1")
        big = received(ws, misc / "single_face.mp4", "holiday.mp4")  # 208 kB
        with pytest.raises(VideoError, match=r"^holiday.mp4: 0.2 MB is over this page's 0.191 MB upload limit"):
            ws.open_video(v, big)
        assert not big.path.exists()

        long = received(ws, misc / "no_face.mp4", "long.mp4")  # 3.95 s
        with pytest.raises(VideoError, match=r"^long.mp4: 4.0 s is longer than this page's 2 s video limit"):
            ws.open_video(v, long)
        assert v.video is None and not list(v.folder.iterdir())

        junk = tmp_path / "junk.mp4"
        junk.write_bytes(b"\0\0\0 ftypisom but not really" * 10)
        with pytest.raises(VideoError) as err:
            ws.open_video(v, received(ws, junk, "clip.mov"))
        assert str(err.value).startswith("clip.mov: not a video ffmpeg can read")
        assert str(ws.root) not in str(err.value)
    finally:
        ws.close()


def test_face_boxes_and_clicks():
    ws_faces = [type("F", (), {"box": np.array(b, float)}) for b in ([0, 0, 100, 100], [40, 40, 60, 60])]
    assert face_at(ws_faces, 50, 50) == 1 and face_at(ws_faces, 10, 10) == 0 and face_at(ws_faces, 200, 5) is None
    drawn = draw_faces(np.zeros((120, 120, 3), np.uint8), ws_faces, 1.0, "1")
    assert drawn[40, 50].tolist() == [40, 200, 70] and drawn[0, 50].tolist() == [255, 190, 40]
    # a face that will not be edited is still drawn, in red, whichever face is picked
    drawn = draw_faces(np.zeros((120, 120, 3), np.uint8), ws_faces, 1.0, "all", refused={0})
    assert drawn[0, 50].tolist() == [220, 40, 40] and drawn[40, 50].tolist() == [40, 200, 70]


def test_serve_help():
    r = subprocess.run([sys.executable, "-m", "facexpr.cli", "serve", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "127.0.0.1" in r.stdout and "--max-upload-mb" in r.stdout


# -- the page in a real browser ----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(shared_data):
    """``facexpr serve`` on a free port with a 1 MB upload limit: (url, its temp folder)."""
    if importlib.util.find_spec("gradio") is None:
        pytest.skip("gradio is not installed (pip install -e '.[dev]')")
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "facexpr.cli", "serve", "--port", str(port), "--max-upload-mb", str(UPLOAD_LIMIT_MB)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            log.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    url = root = None
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        found = re.search(r"open (http://\S+) in a browser.*files in (\S+), deleted", line)
        if found:
            url, root = found.group(1), Path(found.group(2))
    if url is None:
        proc.kill()
        pytest.fail("facexpr serve did not start:\n" + "".join(log))
    assert url.startswith(f"http://127.0.0.1:{port}")
    yield url, root
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("facexpr serve did not stop on SIGTERM")
    assert proc.returncode == 0, "".join(log)
    assert "Traceback" not in "".join(log), "".join(log)
    assert not root.exists(), f"{root} left behind"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1500",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.downloads = downloads  # type: ignore[attr-defined]
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    """shot(driver, name): a PNG screenshot in the test's temp folder (and $FACEXPR_WEB_SHOTS)."""
    folder = tmp_path_factory.mktemp("screenshots")
    extra = os.environ.get("FACEXPR_WEB_SHOTS")

    def take(driver, name: str) -> Path:
        path = folder / f"{name}.png"
        assert driver.save_screenshot(str(path))
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path

    return take


def _wait(driver, condition, what: str, timeout: float = 60.0):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: condition(d))
    except TimeoutException:
        body = driver.find_element("tag name", "body").text
        pytest.fail(f"timed out waiting for {what}; the page says:\n{body[:2000]}")


def _status(driver) -> str:
    return driver.find_element("id", "facexpr-status").text


def _open(driver, url: str) -> None:
    driver.get(url)
    _wait(driver, lambda d: d.find_elements("css selector", "#facexpr-photo input[type=file]"), "the page")


def _upload(driver, path: Path) -> None:
    driver.find_element("css selector", "#facexpr-photo input[type=file]").send_keys(str(path))


def test_page_upload_happy_download(server, browser, shot, portraits):
    url, root = server
    source = portrait_path(portraits)
    _open(browser, url)
    shot(browser, "01-empty")
    _upload(browser, source)
    _wait(browser, lambda d: "Found 1 face" in _status(d), "the analysis")
    shot(browser, "02-uploaded")

    browser.find_element("id", "facexpr-emotion-happy").click()
    _wait(browser, lambda d: _status(d).startswith("Happy at 0.8"), "the edit")
    links = _wait(browser, lambda d: d.find_elements("css selector", "#facexpr-downloads a[download]"), "downloads")
    shot(browser, "03-happy")
    assert "Error" not in _status(browser)

    png_link = next(a for a in links if a.get_attribute("download").endswith(".png"))
    png_link.click()  # a real browser download
    png = browser.downloads / png_link.get_attribute("download")
    _wait(browser, lambda d: png.exists() and not list(browser.downloads.glob("*.crdownload")), "the download", 30)

    before = load_image(source).rgb
    after = np.asarray(Image.open(png).convert("RGB"))
    assert after.shape == before.shape  # full resolution
    changed = np.any(after != before, axis=2)
    assert changed.mean() > 0.01, "happy changed (almost) nothing"
    from facexpr.face.detect import FaceAnalyzer

    with FaceAnalyzer() as analyzer:
        x0, y0, x1, y1 = analyzer.analyze(before)[0].box
    m = 0.15 * max(x1 - x0, y1 - y0)  # the warp's band around the face (a smiling chin moves the neck)
    face = np.zeros_like(changed)
    face[max(0, int(y0 - m)):int(y1 + m) + 1, max(0, int(x0 - m)):int(x1 + m) + 1] = True
    assert not (changed & ~face).any(), "pixels outside the face changed"

    jpg_link = next(a for a in links if a.get_attribute("download").endswith(".jpg"))
    with urllib.request.urlopen(jpg_link.get_attribute("href"), timeout=30) as r:
        jpg = browser.downloads / "edited.jpg"
        jpg.write_bytes(r.read())
    with Image.open(jpg) as out, Image.open(source) as src:
        assert out.size == src.size and out.quantization == src.quantization  # the input's encoding

    for forbidden in ("/etc/passwd", str(Path(__file__).resolve())):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url.rstrip('/')}/gradio_api/file={forbidden}", timeout=30)
        assert err.value.code in (403, 404)

    assert list((root / "visitors").glob("*/*-edited.png"))
    browser.get("about:blank")  # the page is closed: its files go
    deadline = time.monotonic() + 30
    while list((root / "visitors").glob("*/*-edited.png")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not list((root / "visitors").glob("*/*-edited.png")), "the closed page's files were kept"


def test_page_refuses_an_oversize_upload(server, browser, shot, tmp_path):
    _open(browser, server[0])
    _upload(browser, noise_png(tmp_path / "too-big.png"))
    _wait(browser, lambda d: "exceed the maximum allowed size" in d.find_element("tag name", "body").text,
          "the size message", 30)
    shot(browser, "04-oversize")
    assert "Found" not in _status(browser)


def test_page_refuses_over_100_megapixels(server, browser, shot, tmp_path):
    _open(browser, server[0])
    _upload(browser, hundred_megapixel_png(tmp_path / "panorama.png"))
    _wait(browser, lambda d: "Error" in _status(d), "the pixel-limit message", 30)
    shot(browser, "05-100mp")
    assert "panorama.png: 12000x9000 = 108 MP is larger than the 100 MP limit" in _status(browser)


def test_page_says_when_there_is_no_face(server, browser, shot, misc):
    _open(browser, server[0])
    _upload(browser, misc / "free-mountain-vector-01.jpg")
    _wait(browser, lambda d: "Error" in _status(d), "the no-face message", 60)
    shot(browser, "06-no-face")
    assert "no face found in free-mountain-vector-01.jpg" in _status(browser)
    assert "Traceback" not in browser.find_element("tag name", "body").text


def test_page_offers_no_style_transfer_model(tmp_path: Path) -> None:
    """nst needs a reference photo and minutes per edit: the page's sliders cannot drive it."""
    from facexpr.web.workspace import Workspace

    ws = Workspace(root=tmp_path)
    try:
        names = ws.model_names()
        assert "nst" not in names and "geometry-v1" in names and names[0] == ws.default_model
    finally:
        close = getattr(ws, "close", None)
        if close:
            close()
