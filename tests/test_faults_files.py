"""The fault corpus for files, paths, models and the server (issue 17): tiny generated
files in tmp_path, one case each, asserting the exact outcome (the reason an unreadable
row records, or the one-line error naming the cause) and that no source file changed."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.__main__ import main as cli
from pipeline.contracts import sources
from pipeline.contracts.embedfiles import read_meta
from pipeline.contracts.modelfile import load_trained, save_model
from pipeline.core.config import parse_sections
from pipeline.core.errors import ParamsError, PipelineError
from pipeline.core.files import atomic_path
from pipeline.finetuning.backbones import WeightsError, create_model, load_torch_file
from pipeline.finetuning.training import Checkpointer
from pipeline.modality.image.decoding import IMAGES, UnreadableImage, decode_image
from pipeline.params.data import DataConfig
from pipeline.params.model import ModelConfig
from pipeline.serving.serve import PixelBudget
from pipeline.stages import embed, prepare

from .conftest import REPO, class_image, repo_params

MAX_PIXELS = 10**6


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` with its content hash (regular files), link target
    or file type; special files are never opened."""
    found = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            found[str(path)] = ("link", os.readlink(path))
        elif stat.S_ISREG(info.st_mode):
            found[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(),
                                info.st_mtime_ns)
        else:
            found[str(path)] = ("other", stat.S_IFMT(info.st_mode))
    return found


FROZEN: dict[Path, dict[str, tuple]] = {}


def freeze(folder: Path) -> None:
    """Record the source folder as it must still be when the test ends."""
    FROZEN[folder] = snapshot(folder)


@pytest.fixture
def src(tmp_path):
    """A source folder whose every entry must be unchanged when the test ends."""
    folder = tmp_path / "images"
    folder.mkdir()
    yield folder
    before = FROZEN.pop(folder)  # every test that makes files freezes them
    assert snapshot(folder) == before, "a source file changed"


def _png(pixels: np.ndarray | Image.Image, **kw) -> bytes:
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated by 90 degrees
    return _png(np.zeros((10, 30, 3), np.uint8), format="JPEG", exif=exif.tobytes())


def _palette_transparent() -> bytes:
    img = Image.fromarray(np.zeros((4, 4), np.uint8), mode="P")
    img.putpalette([0, 0, 0] * 256)
    img.info["transparency"] = 0
    return _png(img, transparency=0)


def _bind_socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


# (file name, how to make it, expected reason ("" = decodes), check of the pixels)
FILE_CASES = {
    "zero_byte": ("empty.png", lambda p: p.write_bytes(b""), "empty file (0 bytes)", None),
    "truncated": ("cut.png", lambda p: p.write_bytes(_png(class_image(0, 1, 64))[:300]),
                  "corrupt or truncated: ", None),
    "text_as_image": ("text.jpg", lambda p: p.write_text("hello"),
                      "not an image, or a format Pillow cannot read", None),
    "decompression_bomb": ("bomb.png", lambda p: p.write_bytes(
        _png(Image.new("1", (2000, 2000)))),
        "2000x2000 = 4000000 pixels is above the pixel limit 1000000", None),
    "cmyk": ("cmyk.jpg", lambda p: p.write_bytes(
        _png(Image.fromarray(class_image(0, 0)).convert("CMYK"), format="JPEG")), "",
        lambda a: a.shape == (20, 20, 3)),
    "16_bit": ("deep.png", lambda p: p.write_bytes(
        _png(Image.fromarray(np.full((5, 5), 0x1234, np.uint16)))), "",
        lambda a: (a == 0x12).all()),
    "palette_transparent": ("pal.png", lambda p: p.write_bytes(_palette_transparent()), "",
                            lambda a: (a == 255).all()),
    "exif_rotation": ("rot.jpg", lambda p: p.write_bytes(_exif_rotated()), "",
                      lambda a: a.shape == (30, 10, 3)),
    "odd_name": (" -#odd [*] é, name!.png", lambda p: p.write_bytes(_png(class_image(1, 1))),
                 "", lambda a: a.shape == (20, 20, 3)),
    "fifo": ("pipe.png", lambda p: os.mkfifo(p),
             "a FIFO (named pipe), not a regular file: never opened", None),
    "socket": ("sock.png", _bind_socket, "a socket, not a regular file: never opened", None),
    "symlink_loop": ("loop.png", lambda p: os.symlink(p.name, p),
                     "symbolic link loop (too many levels of symbolic links)", None),
    "dangling_link": ("dangling.png", lambda p: os.symlink("gone.png", p),
                      "dangling symbolic link (to 'gone.png', which does not exist)", None),
    "device": ("zero.png", lambda p: os.symlink("/dev/zero", p),
               "a character device, not a regular file: never opened", None),
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_each_file_decodes_or_gets_its_reason(src, case):
    name, make, reason, check = FILE_CASES[case]
    path = src / name
    make(path)
    freeze(src)
    if reason:
        with pytest.raises(UnreadableImage) as caught:
            IMAGES.decode(path, max_pixels=MAX_PIXELS)
        assert str(caught.value).startswith(reason)
    else:
        assert check(IMAGES.decode(path, max_pixels=MAX_PIXELS))


def _data(root: Path, source: str = "folder", manifest: str = "", allow: bool = False):
    return DataConfig(source=source, root=str(root), manifest=manifest,
                      allow_outside_root=allow)


def test_every_case_is_one_row_with_its_reason_after_prepare_and_embed(src, tmp_path):
    """A class folder holding every case: prepare lists each (special files never
    opened), embed records each reason, .dvcignore gets rules for the special ones."""
    for i, (name, make, _, _) in enumerate(FILE_CASES.values()):
        folder = src / f"c{i % 2}"
        folder.mkdir(exist_ok=True)
        make(folder / name)
    for i in range(4):  # embed needs some images that decode
        Image.fromarray(class_image(i % 2, i)).save(src / f"c{i % 2}" / f"ok{i}.png")
    freeze(src)
    ignore = tmp_path / ".dvcignore"
    ignore.write_text("# the user's own rule\n*.tmp\n")
    data = _data(src, allow=True)  # the device case is a link to /dev/zero
    df = prepare.run(data, tmp_path / "prepared.csv", ignore=ignore)
    (cfg,) = parse_sections(repo_params(**{"embed.model": "test_efficientnet",
                                           "embed.weights": "none", "embed.image_size": 32,
                                           "embed.max_pixels": MAX_PIXELS}), "embed")
    embed.run(data, cfg, tmp_path / "prepared.csv", tmp_path / "embed", device="cpu")
    errors = dict(zip(df["path"], read_meta(tmp_path / "embed").error))
    for i, (name, _, reason, _) in enumerate(FILE_CASES.values()):
        assert errors[f"c{i % 2}/{name}"].startswith(reason) if reason else \
            errors[f"c{i % 2}/{name}"] == "", name
    rules = ignore.read_text().splitlines()
    assert rules[:2] == ["# the user's own rule", "*.tmp"]
    assert sorted(r for r in rules if r.startswith("/")) == sorted(
        f"/images/c{i % 2}/{name}" for i, (name, _, reason, _) in enumerate(FILE_CASES.values())
        if "never opened" in reason or "symbolic link" in reason)


def test_dvc_status_skips_what_prepare_listed_in_dvcignore(src, tmp_path):
    """A real DVC repository: FIFO, loop and dangling link under the dep make `dvc status`
    hang or fail; with prepare's .dvcignore rules it reports up to date."""
    dvc = shutil.which("dvc") or pytest.skip("dvc not installed")
    for i in range(2):
        (src / "a").mkdir(exist_ok=True)
        Image.fromarray(class_image(0, i)).save(src / "a" / f"{i}.png")
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    run = lambda *a: subprocess.run(a, cwd=tmp_path, env=env, capture_output=True,  # noqa
                                    text=True, timeout=60)
    run("git", "init", "-q")
    run(dvc, "init", "-q")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  list:\n    cmd: ls -R images > out.txt\n    deps: [images]\n"
        "    outs: [out.txt]\n")
    assert run(dvc, "repro", "-q").returncode == 0
    os.mkfifo(src / "a" / "pipe.png")
    os.symlink("loop.png", src / "a" / "loop.png")
    assert "Too many levels of symbolic links" in run(dvc, "status").stderr
    freeze(src)
    sources.write_dvcignore(sources.unhashable(src), tmp_path / ".dvcignore")
    status = run(dvc, "status")  # without the rules: hangs on the FIFO
    assert status.returncode == 0 and "up to date" in status.stdout, status.stderr


@pytest.mark.parametrize("row,shown", [
    ("../../../../../../../../etc/passwd", "-> /etc/passwd"),
    ("/etc/hostname", "'/etc/hostname' -> /etc/hostname"),
    ("link.png", "'link.png' -> "),  # a symbolic link to a file outside the root
])
def test_rows_outside_the_root_stop_prepare_naming_the_opt_in(src, tmp_path, row, shown):
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png(class_image(0, 0)))
    os.symlink(outside, src / "link.png")
    (src / "in.png").write_bytes(_png(class_image(1, 0)))
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,label\nin.png,a\n{row},b\n")
    freeze(src)
    with pytest.raises(PipelineError) as caught:
        prepare.run(_data(src, "csv", str(manifest)), tmp_path / "p.csv",
                    ignore=tmp_path / ".dvcignore")
    message = str(caught.value)
    assert message.startswith("1 file(s) resolve outside data.root") and shown in message
    assert "set data.allow_outside_root: true" in message
    assert not (tmp_path / "p.csv").exists()


def test_allow_outside_root_reads_them_and_never_opens_a_device(src, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png(class_image(0, 0)))
    (src / "in.png").write_bytes(_png(class_image(1, 0)))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nin.png,a\n../outside.png,b\n/dev/zero,b\n")
    freeze(src)
    df = prepare.run(_data(src, "csv", str(manifest), allow=True), tmp_path / "p.csv",
                     ignore=tmp_path / ".dvcignore")
    ids = dict(zip(df["path"], df["image_id"]))
    assert ids["../outside.png"] == hashlib.sha256(outside.read_bytes()).hexdigest()[:16]
    assert ids["/dev/zero"].startswith("x")  # hashed by its path: never read


def test_allow_outside_root_must_be_a_boolean():
    with pytest.raises(ParamsError, match="data.allow_outside_root"):
        parse_sections(repo_params(**{"data.allow_outside_root": "maybe"}), "data")


# ----------------------------------------------------------------------------- models


def _model_file(path: Path, name: str = "test_efficientnet", classes: int = 3,
                weights_from: tuple[str, int] | None = None) -> Path:
    """A models/model.pt as the train stage writes it; ``weights_from`` saves another
    architecture's or class count's weights under this meta."""
    model, prep, info = create_model(ModelConfig(name, "none", 0.0), num_classes=classes)
    if weights_from:
        model, _, _ = create_model(ModelConfig(weights_from[0], "none", 0.0),
                                   num_classes=weights_from[1])
    meta = {"classes": [f"k{i}" for i in range(classes)], "arch": info["arch"],
            "model": {"name": name, "weights": "none", "drop_rate": 0.0},
            "preprocessing": {"image_size": 32, "fit": "crop", "mean": list(prep.mean),
                              "std": list(prep.std)}}
    save_model(path, model.state_dict(), meta)
    return path


class RunsCode:
    """A pickle that would call os.system when loaded unsafely."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _unsafe(path: Path) -> Path:
    torch.save({"w": torch.zeros(2), "x": RunsCode()}, path)
    return path


def _truncated(path: Path) -> Path:
    data = _model_file(path).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bare(path: Path) -> Path:
    model, _, _ = create_model(ModelConfig("test_efficientnet", "none", 0.0), num_classes=3)
    torch.save(model.state_dict(), path)
    return path


def _onnx(path: Path) -> Path:
    path.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(200))  # an ONNX protobuf's start
    return path


MODEL_CASES = {
    "unsafe_pickle": ("m.pt", _unsafe, "cannot be loaded safely: besides tensors it holds "
                      "Python objects (posix.system) whose loading could run code. Convert "
                      "it to .safetensors with a tool you trust and use that file"),
    "truncated": ("m.pt", _truncated, "is not a readable PyTorch file (truncated or corrupt: "
                  "PytorchStreamReader failed reading zip archive"),
    "bare_state_dict": ("m.pt", _bare, "is not a model saved by the train stage (a bare state "
                        "dict or another object"),
    "onnx_file": ("model.onnx", _onnx, "is an ONNX model, not a PyTorch file"),
    "other_class_count": ("m.pt", lambda p: _model_file(p, weights_from=(
        "test_efficientnet", 5)), "its weights do not fit the model its meta names "
        "(test_efficientnet, 3 classes): classifier.weight is (5, "),
    "other_architecture": ("m.pt", lambda p: _model_file(p, weights_from=("test_resnet", 3)),
                           "its weights do not fit the model its meta names "
                           "(test_efficientnet, 3 classes): "),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_predict_refuses_an_incompatible_model_in_one_line(tmp_path, capsys, case):
    name, make, message = MODEL_CASES[case]
    model = make(tmp_path / name)
    image = tmp_path / "x.png"
    image.write_bytes(_png(class_image(0, 0)))
    with pytest.raises(SystemExit) as caught:
        cli(["predict", str(image), "--model", str(model), "--out", str(tmp_path / "p.csv"),
             "--device", "cpu"])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {model}") and message in err, err
    assert "weights_only=False" not in err and "Traceback" not in err


def test_unsafe_weights_file_is_refused_without_torchs_advice(tmp_path):
    with pytest.raises(WeightsError) as caught:
        load_torch_file(_unsafe(tmp_path / "w.pth"))
    assert "weights_only" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_corrupt_checkpoint_is_set_aside_and_training_starts_afresh(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    data = _model_file(tmp_path / "m.pt").read_bytes()
    (folder / "last.pt").write_bytes(data[:1000])
    assert Checkpointer(folder, ["params"]).load() is None
    out = capsys.readouterr().out
    assert out == (f"{folder / 'last.pt'} is not a readable PyTorch file (truncated or "
                   f"corrupt: PytorchStreamReader failed reading zip archive: failed finding "
                   f"central directory): set aside as {folder / 'last.pt.corrupt'}, training "
                   f"afresh\n")
    assert not (folder / "last.pt").exists()
    assert (folder / "last.pt.corrupt").read_bytes() == data[:1000]


def test_a_failed_write_leaves_the_previous_model_whole(tmp_path):
    model = _model_file(tmp_path / "model.pt")
    before = model.read_bytes()
    with pytest.raises(OSError, match="No space left"):
        with atomic_path(model) as partial:
            partial.write_bytes(before[:100])
            raise OSError(28, "No space left on device")
    assert model.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["model.pt"]
    assert load_trained(model)[2]["classes"] == ["k0", "k1", "k2"]


# ----------------------------------------------------------------------------- server

SERVER_MAX_BYTES = 300_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server on 127.0.0.1 with a 3-class model and the default --top-k (5)."""
    model = _model_file(tmp_path_factory.mktemp("serve") / "model.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--model", str(model), "--port",
         str(port), "--max-bytes", str(SERVER_MAX_BYTES), "--device", "cpu"], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    yield url, process.pid, port
    process.terminate()
    process.wait(timeout=30)


def _post(url: str, data: bytes, **kw) -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"file": ("x.png", data)}, timeout=60, **kw)


SERVER_CASES = {
    "default_top_k_clamped": (lambda: _png(class_image(0, 1)), 200, None),
    "empty": (lambda: b"", 422, "empty upload"),
    "non_image": (lambda: b"%PDF-1.4 not an image", 415,
                  "unreadable image: not an image, or a format Pillow cannot read"),
    "truncated": (lambda: _png(class_image(0, 0, size=64))[:300], 422,
                  "unreadable image: corrupt or truncated: image file is truncated"),
    "bomb": (lambda: _png(Image.new("1", (8000, 8000))), 413,
             "unreadable image: 8000x8000 = 64000000 pixels is above the pixel limit 40000000"),
    "oversize": (lambda: bytes(SERVER_MAX_BYTES + 1), 413,
                 f"upload larger than {SERVER_MAX_BYTES} bytes"),
}


@pytest.mark.parametrize("case", SERVER_CASES)
def test_server_answers_each_upload_with_its_status_and_reason(server, case):
    make, code, detail = SERVER_CASES[case]
    reply = _post(server[0], make())
    assert reply.status_code == code, reply.text
    if detail:
        assert reply.json()["detail"] == detail
    else:
        assert [t["label"] for t in reply.json()["top_k"]] != [] and \
            len(reply.json()["top_k"]) == 3  # every class, not 422 for k=5


def test_server_refuses_a_declared_length_before_reading_the_body(server):
    """Content-Length 400 MB, no body sent: the answer comes at once."""
    with socket.create_connection(("127.0.0.1", server[2]), timeout=10) as conn:
        conn.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data;"
                     b" boundary=b\r\nContent-Length: 400000000\r\n\r\n")
        reply = b""
        while chunk := conn.recv(4096):  # the server closes the connection
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413") and \
        f'"upload larger than {SERVER_MAX_BYTES} bytes"' in reply


def test_server_stops_a_chunked_body_past_the_limit(server):
    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n"
        for _ in range(100):  # 6.4 MB, never all sent
            yield bytes(65536)

    reply = httpx.post(f"{server[0]}/predict", content=chunks(), timeout=60,
                       headers={"content-type": "multipart/form-data; boundary=b"})
    assert reply.status_code == 413


def test_server_answers_malformed_multipart_with_a_4xx(server):
    reply = httpx.post(f"{server[0]}/predict", content=b"--nope\r\ngarbage", timeout=30,
                       headers={"content-type": "multipart/form-data; boundary=b"})
    assert 400 <= reply.status_code < 500


def test_server_memory_stays_bounded_under_a_burst_of_large_images(server):
    """12 concurrent 3000 x 3000 uploads (9 Mpx, about 120 MB each while decoded): the
    server decodes 2 at a time, so its peak grows by far less than 12 decodes."""
    url, pid = server[:2]
    big = _png(np.zeros((3000, 3000, 3), np.uint8))
    mixed = [big] * 12 + [b"text", big[:500]] * 4
    rss = lambda key: int(next(line for line in Path(f"/proc/{pid}/status").read_text()  # noqa
                               .splitlines() if line.startswith(key)).split()[1]) // 1024
    before = rss("VmHWM")
    with ThreadPoolExecutor(max_workers=len(mixed)) as pool:
        codes = list(pool.map(lambda d: _post(url, d).status_code, mixed))
    assert codes.count(200) == 12 and max(codes) < 500
    assert rss("VmHWM") - before < 700, "MiB: more than about 4 decodes in flight"


def test_pixel_budget_bounds_pixels_in_flight():
    budget, lock = PixelBudget(100), threading.Lock()
    state = {"now": 0, "peak": 0}

    def work(pixels: int) -> None:
        with budget.hold(pixels):
            with lock:
                state["now"] += pixels
                state["peak"] = max(state["peak"], state["now"])
            time.sleep(0.01)
            with lock:
                state["now"] -= pixels

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(work, [40] * 20 + [150] * 2))  # 150 > limit: runs alone
    assert state["peak"] == 150 and budget.used == 0


def test_decode_of_an_in_memory_upload_keeps_the_callers_file_open():
    buf = io.BytesIO(_png(class_image(0, 0)))
    assert decode_image(buf, max_pixels=MAX_PIXELS).shape == (20, 20, 3) and not buf.closed


def test_a_file_name_that_is_not_utf8_is_an_unreadable_row_dvc_never_hashes(src, tmp_path):
    """``caf\\xe9.png`` (Latin-1 bytes in a name): prepare lists it escaped in a complete
    UTF-8 manifest, decoding it gives the reason, and the .dvcignore rule keeps
    `dvc status` (which fails on such a name) working."""
    for i in range(4):
        (src / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(class_image(i % 2, i)).save(src / f"c{i % 2}" / f"ok{i}.png")
    Image.fromarray(class_image(0, 9)).save(os.fsdecode(bytes(src / "c0") + b"/caf\xe9.png"))
    freeze(src)
    root = tmp_path  # the repository, src = root/images inside it
    df = prepare.run(_data(src), root / "prepared.csv", ignore=root / ".dvcignore")
    written = (root / "prepared.csv").read_text(encoding="utf8")
    assert len(df) == 5 and written.count("\n") == 6 and "c0/caf\\xe9.png" in written
    with pytest.raises(UnreadableImage) as caught:
        IMAGES.decode(src / "c0/caf\\xe9.png", max_pixels=MAX_PIXELS)
    assert str(caught.value) == ("file name is not valid UTF-8 (shown with \\xNN escapes): "
                                 "never opened; rename the file to read it")
    rules = (root / ".dvcignore").read_text(encoding="utf8").splitlines()
    assert "/images/c0/caf?.png" in rules, rules
    dvc = shutil.which("dvc") or pytest.skip("dvc not installed")
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    run = lambda *a: subprocess.run(a, cwd=root, env=env, capture_output=True,  # noqa
                                    text=True, timeout=60)
    run("git", "init", "-q")
    run(dvc, "init", "-q")
    (root / "dvc.yaml").write_text("stages:\n  list:\n    cmd: ls -R images > out.txt\n"
                                   "    deps: [images]\n    outs: [out.txt]\n")
    assert run(dvc, "repro", "-q").returncode == 0
    status = run(dvc, "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stderr
