"""Getting a client's clip onto disk safely: an upload (video file or zip of frames) or a path
under the configured media root. Every way a clip can be bad maps to a 4xx with a reason."""

from __future__ import annotations

import shutil
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from mellm.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES

MAX_PATH_CHARS = 1024


def _shown(path: str) -> str:
    """A client's path as an error message quotes it: cut short, so a 6000-character path is not echoed."""
    return repr(path if len(path) <= 100 else path[:100] + "...")


class ClipRequestError(Exception):
    """A clip the gateway refuses: `status` is the HTTP status, the message the reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def resolve_media_path(media_root: Path | None, path: str) -> Path:
    """`path` relative to the media root, refusing anything that would leave it (absolute paths,
    `..`, symlinks pointing out)."""
    if media_root is None:
        raise ClipRequestError(400, "this gateway has no media root: upload the clip instead of giving a path")
    if len(path) > MAX_PATH_CHARS:
        raise ClipRequestError(400, f"path of {len(path)} characters: at most {MAX_PATH_CHARS} are accepted")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise ClipRequestError(400, f"path {_shown(path)} holds control characters (a NUL byte, say)")
    if not path or PurePosixPath(path).is_absolute() or Path(path).is_absolute():
        raise ClipRequestError(403, f"path {_shown(path)} must be relative to the media root")
    root = media_root.resolve()
    try:
        target = (root / path).resolve()
        if not target.is_relative_to(root):
            raise ClipRequestError(403, f"path {_shown(path)} is outside the media root")
        exists = target.exists()
    except (OSError, ValueError, RuntimeError) as e:  # a name too long for the file system, a link loop
        raise ClipRequestError(400, f"path {_shown(path)} cannot be used: {type(e).__name__}") from None
    if not exists:
        raise ClipRequestError(404, f"no clip at {_shown(path)} under the media root")
    return target


def save_upload(filename: str, data_path: Path, workdir: Path, max_files: int = 5000,
                max_unpacked_bytes: int = 2 << 30) -> Path:
    """An uploaded file (already streamed to `data_path`) -> a clip path inside `workdir`.

    A .zip holds frames: only image files are extracted, by their base names (no paths from the
    archive are used), within a file-count and unpacked-size budget (zip bombs). A video keeps its
    suffix so the decoder recognises it."""
    suffix = Path(filename or "").suffix.lower()
    if suffix == ".zip":
        return _unzip_frames(data_path, workdir / "frames", max_files, max_unpacked_bytes)
    if suffix in VIDEO_SUFFIXES:
        target = workdir / f"clip{suffix}"
        shutil.move(data_path, target)
        return target
    raise ClipRequestError(415, f"upload {filename!r}: expected a video ({', '.join(sorted(VIDEO_SUFFIXES))}) "
                                "or a .zip of frames")


def _unzip_frames(archive: Path, folder: Path, max_files: int, max_bytes: int) -> Path:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        raise ClipRequestError(422, "upload is not a valid zip archive") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir() and Path(m.filename).suffix.lower() in IMAGE_SUFFIXES]
        if not members:
            raise ClipRequestError(422, "the zip holds no image frames")
        if len(members) > max_files:
            raise ClipRequestError(413, f"the zip holds {len(members)} frames; at most {max_files} are accepted")
        if sum(m.file_size for m in members) > max_bytes:
            raise ClipRequestError(413, f"the zip unpacks to more than {max_bytes >> 20} MiB")
        names = [PurePosixPath(m.filename.replace("\\", "/")).name for m in members]
        if len(set(names)) != len(names):
            raise ClipRequestError(422, "the zip holds frames with the same name in different folders")
        folder.mkdir(parents=True)
        budget = max_bytes
        for m, name in zip(members, names):
            try:
                with zf.open(m) as src, open(folder / name, "wb") as dst:
                    # Counted as written, not trusted from the header: a lying size field cannot pass the budget.
                    while chunk := src.read(1 << 20):
                        budget -= len(chunk)
                        if budget < 0:
                            raise ClipRequestError(413, f"the zip unpacks to more than {max_bytes >> 20} MiB")
                        dst.write(chunk)
            except ClipRequestError:
                raise
            except RuntimeError as e:  # zipfile's word for an encrypted member
                raise ClipRequestError(422, f"zip member {name!r} cannot be read: {e}") from None
            except NotImplementedError as e:  # a compression method zipfile does not know
                raise ClipRequestError(422, f"zip member {name!r} cannot be read: {e}") from None
            except (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError) as e:  # bad CRC, truncated, lying sizes
                raise ClipRequestError(422, f"zip member {name!r} is damaged: {e}") from None
    return folder
