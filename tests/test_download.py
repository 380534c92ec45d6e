"""data/download.py and data/verify.py against a local HTTP server (127.0.0.1) serving restored LA cases."""
from __future__ import annotations

import importlib.util
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import pytest

from dataloaders import read_list
from dataloaders.manifest import LA_FOLDER

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"data_{name}", REPO / "data" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


download = load_script("download")
verify = load_script("verify")


class Handler(SimpleHTTPRequestHandler):
    """Static files with Range support; `faults[path]` = 'interrupt' cuts the first response in half."""

    faults: dict[str, str] = {}
    ranges: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if (header := self.headers.get("Range")) is not None:
            self.ranges.append(header)
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.faults.pop(self.path, None) == "interrupt":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(la_root, tmp_path):
    """Serves a copy of two restored LA cases; yields (base_url, served folder, case ids)."""
    served = tmp_path / "served"
    cases = read_list(la_root / "train.list")[:2]
    for case in cases:
        source = la_root / LA_FOLDER / case / "mri_norm2.h5"
        (served / LA_FOLDER / case).mkdir(parents=True)
        shutil.copy(source, served / LA_FOLDER / case / "mri_norm2.h5")
    handler = type("H", (Handler,), {"faults": {}, "ranges": [],
                                     "__init__": lambda self, *a, **k: Handler.__init__(self, *a, directory=str(served),
                                                                                        **k)})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", served, cases, handler
    httpd.shutdown()
    httpd.server_close()


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_correct_files_download_and_verify(server, tmp_path):
    url, served, cases, _ = server
    dest = tmp_path / "LA"
    written = download.download("la", dest, url, cases, progress=False)
    assert len(written) == 2 and files_in(dest) == files_in(served)
    assert verify.verify(dest) is True
    assert download.main(["la", str(dest), "--base_url", url, "--cases", ",".join(cases), "--no_progress",
                          "--write_lists", str(tmp_path / "lists")]) == 0
    # the lists name the downloaded cases only, in the official order; the last one validates; no test case
    assert read_list(tmp_path / "lists" / "train.list") == cases
    assert read_list(tmp_path / "lists" / "val.list") == cases[-1:]
    assert read_list(tmp_path / "lists" / "test.list") == []
    assert verify.main([str(dest), "--write_lists", str(tmp_path / "lists2")]) == 0
    assert read_list(tmp_path / "lists2" / "train.list") == cases


def test_corrupt_file_is_refused_and_deleted(server, tmp_path, capsys):
    url, served, cases, _ = server
    with h5py.File(served / LA_FOLDER / cases[0] / "mri_norm2.h5", "r+") as f:
        f["image"][0, 0, 0] += 1.0  # a valid h5 file with one changed voxel
    dest = tmp_path / "LA"
    assert download.main(["la", str(dest), "--base_url", url, "--cases", cases[0], "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert "content hash mismatch" in err and cases[0] in err and "Traceback" not in err
    assert files_in(dest) == []


def test_truncated_file_is_refused_and_deleted(server, tmp_path):
    url, served, cases, _ = server
    path = served / LA_FOLDER / cases[0] / "mri_norm2.h5"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        download.download("la", tmp_path / "LA", url, cases[:1], progress=False)
    assert files_in(tmp_path / "LA") == []


def test_missing_file_is_a_clear_error(server, tmp_path):
    url, served, cases, _ = server
    shutil.rmtree(served / LA_FOLDER / cases[0])
    with pytest.raises(FileNotFoundError, match="HTTP 404"):
        download.download("la", tmp_path / "LA", url, cases[:1], progress=False)
    assert files_in(tmp_path / "LA") == []


def test_interrupted_download_resumes(server, tmp_path):
    url, served, cases, handler = server
    relative = f"/{LA_FOLDER}/{cases[0]}/mri_norm2.h5".replace(" ", "%20")
    handler.faults[relative] = "interrupt"
    dest = tmp_path / "LA"
    with pytest.raises(ConnectionError, match="rerun the same command to resume"):
        download.download("la", dest, url, cases[:1], retries=0, progress=False)
    assert files_in(dest / LA_FOLDER) == []  # nothing under the dataset layout yet
    partial = files_in(dest / ".partial")
    assert len(partial) == 1
    download.download("la", dest, url, cases[:1], progress=False)  # the second run resumes with Range
    assert handler.ranges and handler.ranges[-1].startswith("bytes=") and handler.ranges[-1] != "bytes=0-"
    assert files_in(dest) == [f"{LA_FOLDER}/{cases[0]}/mri_norm2.h5"]
    assert verify.verify(dest) is True


def test_verify_reports_a_corrupt_case(la_root, tmp_path, capsys):
    case = read_list(la_root / "train.list")[0]
    copy = tmp_path / "LA" / LA_FOLDER / case
    copy.mkdir(parents=True)
    shutil.copy(la_root / LA_FOLDER / case / "mri_norm2.h5", copy / "mri_norm2.h5")
    assert verify.main([str(tmp_path / "LA")]) == 0
    assert "python -m data.lists la" in capsys.readouterr().out  # cases are missing: how to use the present ones
    with h5py.File(copy / "mri_norm2.h5", "r+") as f:
        f["label"][0, 0, 0] = 1 - f["label"][0, 0, 0]
    assert verify.main([str(tmp_path / "LA")]) == 1
    assert f"differs: LA/{case} (image or label)" in capsys.readouterr().out


def test_acdc_without_a_mirror_prints_the_manual_steps(tmp_path, capsys):
    assert download.main(["acdc", str(tmp_path / "ACDC")]) == 2
    captured = capsys.readouterr()
    assert "SSL4MIS" in captured.out and "python -m data.prepare_acdc" in captured.out and "error:" in captured.err
