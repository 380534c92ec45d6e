"""Download the public LA (or a mirror of the ACDC) h5 files and verify every case against data/MANIFEST.sha256.

    python -m data.download la ./data/LA          # LA from the UA-MT repository's data/ folder on GitHub
    python -m data.download acdc ./data/ACDC      # prints the manual steps (no scriptable public host)
    python -m data.download acdc DEST --base_url https://mirror.example/ACDC   # a mirror with the h5 layout
    python -m data.download la ./data/LA --cases A,B,C --write_lists lists/LA      # a subset and its split lists

Interrupted transfers resume with HTTP Range requests (rerun the same command); the bytes received so far wait
in DEST/.partial/ and nothing appears under the dataset layout until its content hash matches. A corrupt,
truncated or missing file is an error that names the case and leaves no file behind.
"""
from __future__ import annotations

import argparse
import http.client
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from data.lists import refuse_shipped_lists, write_lists
from dataloaders.manifest import (
    MANIFEST,
    dataset_keys,
    h5_content_hash,
    read_manifest,
    relative_path,
)
from utils.cli import ScriptParser, run_cli
from utils.errors import UserError
from utils.progress import progress_bar

LA_URL = "https://github.com/yulequan/UA-MT/raw/master/data"
ACDC_STEPS = """The ACDC h5 files (the SSL4MIS preprocessing the paper uses) are shared through cloud drives that a
script cannot fetch reliably. Either:
  1. download the ACDC archive linked in the 'Data' section of https://github.com/HiLab-git/SSL4MIS,
     unpack it so that {dest}/data/<patient>_<frame>.h5 and {dest}/data/slices/<name>.h5 exist, then
     python -m data.verify {dest} --complete
  2. or register at the ACDC challenge site (https://www.creatis.insa-lyon.fr/Challenge/acdc/), download the
     NIfTI release, convert it (the same files, bit for bit) and check it:
     python -m data.prepare_acdc RAW_FOLDER {dest} && python -m data.verify {dest}
  3. or, with a mirror serving the h5 layout: python -m data.download acdc {dest} --base_url URL"""
CHUNK = 1 << 20


class DownloadInterrupted(ConnectionError):
    """The connection ended early; the bytes received are kept for a Range resume."""


def _stream(url: str, part: Path, timeout: float) -> None:
    """Append the rest of `url` to `part` (Range from its size); a server that ignores Range restarts it."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the part is complete, let the hash decide
            return
        if exc.code == 404:
            raise FileNotFoundError(f"{url} not found (HTTP 404); the source may have moved, see --base_url") \
                from None
        raise ConnectionError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    with response:
        mode = "ab" if response.status == 206 else "wb"
        expected = response.headers.get("Content-Length")
        received = 0
        with open(part, mode) as f:
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    received += len(chunk)
            except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
                raise DownloadInterrupted(f"{url}: connection lost after {received} bytes ({exc})") from None
        if expected is not None and received < int(expected):
            raise DownloadInterrupted(f"{url}: connection closed after {received} of {expected} bytes")


def fetch_case(url: str, target: Path, expected_hash: str, part: Path, retries: int = 3,
               timeout: float = 60.0) -> None:
    """Download `url` into `target` only if its content hash matches; `part` holds the bytes while in transit."""
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        try:
            _stream(url, part, timeout)
            break
        except DownloadInterrupted as exc:
            if attempt == retries:
                raise DownloadInterrupted(f"{exc}; rerun the same command to resume ({part.stat().st_size} bytes "
                                          f"kept in {part})") from None
        except (FileNotFoundError, ConnectionError):
            part.unlink(missing_ok=True)  # a missing or refused file leaves nothing behind
            raise
    try:
        actual = h5_content_hash(part)
    except ValueError:
        actual = "unreadable"
    if actual != expected_hash:
        part.unlink(missing_ok=True)
        raise UserError(f"{url}: content hash mismatch (got {actual[:12]}, manifest {expected_hash[:12]}): the file "
                         f"is corrupt or truncated and was deleted; rerun to download it again")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, target)


def download(dataset: str, dest: str | Path, base_url: str = "", cases: list[str] | None = None,
             manifest: str | Path = MANIFEST, retries: int = 3, timeout: float = 60.0, progress: bool = True
             ) -> list[Path]:
    """Fetch every manifest case of `dataset` (or `cases`) into `dest`; existing verified files are kept."""
    dataset = dataset.upper()
    dest = Path(dest)
    if dataset == "ACDC" and not base_url:
        print(ACDC_STEPS.format(dest=dest))
        raise UserError("ACDC cannot be downloaded by script without a mirror; follow the steps above")
    base_url = (base_url or LA_URL).rstrip("/")
    entries = read_manifest(manifest)
    keys = dataset_keys(entries, dataset)
    if cases:
        unknown = [c for c in cases if f"{dataset}/{c}" not in entries]
        if unknown:
            raise UserError(f"--cases: {unknown[:3]} are not {dataset} cases of {manifest}")
        keys = [f"{dataset}/{c}" for c in cases]
    partial_dir = dest / ".partial"
    written = []
    for key in progress_bar(keys, enabled=progress, desc=f"downloading {dataset}"):
        relative = relative_path(key)
        target = dest / relative
        if target.is_file():
            try:
                if h5_content_hash(target) == entries[key]:
                    written.append(target)
                    continue
            except ValueError:
                pass
            target.unlink()  # a bad file from an earlier copy: fetch it again
        url = f"{base_url}/{urllib.parse.quote(relative)}"
        part = partial_dir / (relative.replace("/", "__") + ".part")  # the same name on every run: resumable
        fetch_case(url, target, entries[key], part, retries, timeout)
        written.append(target)
    if partial_dir.is_dir() and not any(partial_dir.iterdir()):
        shutil.rmtree(partial_dir)
    print(f"{len(written)} {dataset} case(s) verified in {dest}", file=sys.stderr)
    return written


def main(argv: list[str] | None = None) -> int:
    p = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=("la", "acdc"))
    p.add_argument("dest", help="dataset root to fill (e.g. ./data/LA)")
    p.add_argument("--base_url", default="", help=f"source of the h5 layout (LA default: {LA_URL})")
    p.add_argument("--cases", default="", help="comma-separated case names (default: every manifest case)")
    p.add_argument("--retries", type=int, default=3, help="automatic resumes per file after a dropped connection")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without data before giving up")
    p.add_argument("--manifest", default=str(MANIFEST))
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--write_lists", default="", metavar="DIR",
                   help="then write split lists of the cases present in DEST to DIR (python -m data.lists)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c] or None

    def job() -> None:
        if args.write_lists:
            refuse_shipped_lists(Path(args.write_lists))  # before downloading, not after
        download(args.dataset, args.dest, args.base_url, cases, args.manifest, args.retries, args.timeout,
                 not args.no_progress)
        if args.write_lists:
            write_lists(args.dataset, args.dest, args.write_lists)

    return run_cli(job, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
