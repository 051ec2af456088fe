"""Reading clips: a video file (decord, PyAV when decord can't) or a folder of frames.

Frames are addressed by the numbers the datasets' annotation files use. In a video that is the
1-based position. In a frame folder whose file names number the frames (CASME II's `img46.jpg`,
SAMM's `006_05562.jpg`) it is the number in the name, so an annotated onset of 46 reads
`img46.jpg` even when the folder starts there; otherwise it is the 1-based position in natural
order. Frames come back as RGB uint8.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mellm.errors import (
    ClipNotFoundError,
    ClipTooLargeError,
    ConfigError,
    EmptyClipError,
    FrameRangeError,
    UnreadableClipError,
)

LOSSY_IMAGE_SUFFIXES = {".jpg", ".jpeg"}
LOSSLESS_CODECS = {"ffv1", "ffvhuff", "huffyuv", "png", "rawvideo", "utvideo", "qtrle", "magicyuv"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
# In the order clip lookup tries them when a path has no extension (mellm.media).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv")


@dataclass(frozen=True)
class ClipLimits:
    """Bounds on what a clip may make perception decode, checked from file headers before any frame
    is decoded: a 779 KB zip of two 20000x20000 PNGs decodes to 2.4 GB. None: no bound (the CLI's
    default, for a researcher's own files; the gateway sets both)."""

    max_frames: int | None = None
    max_pixels: int | None = None  # width * height of one frame

    def check(self, path: Path, n_frames: int | None, size: tuple[int, int] | None, what: str = "") -> None:
        if self.max_frames is not None and n_frames is not None and n_frames > self.max_frames:
            raise ClipTooLargeError(f"{path} has {n_frames} frames; at most {self.max_frames} are accepted")
        if self.max_pixels is not None and size is not None and size[0] * size[1] > self.max_pixels:
            raise ClipTooLargeError(f"{what or path} is {size[0]}x{size[1]} pixels "
                                    f"({size[0] * size[1] / 1e6:.1f} MP); at most {self.max_pixels / 1e6:.1f} MP "
                                    "per frame are accepted")


def check_fps(fps: float | None) -> float | None:
    """A frame rate given by a user or an annotation file: positive and finite, or None."""
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ConfigError(f"fps must be a positive finite number, got {fps!r}")
    return float(fps)


def _file_fps(value) -> float | None:
    """A container's own frame rate, or None when it reports none usable (0, NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def image_size(file: Path) -> tuple[int, int]:
    """(width, height) from an image file's header, without decoding its pixels."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as img:
                return img.size
    except Image.DecompressionBombError as e:  # past PIL's own bound (about 179 MP)
        raise ClipTooLargeError(f"frame {file} is too large to decode safely ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:  # not an image PIL can read the header of
        raise UnreadableClipError(f"cannot read image {file}: {e}") from None


def natural_key(path: Path) -> list:
    """img2.jpg before img10.jpg."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def list_frame_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=natural_key)


def frame_numbers(files: list[Path]) -> list[int]:
    """The number each file's name carries (its last integer) when those numbers strictly increase
    in natural order; otherwise the positions 1..N."""
    numbers = []
    for f in files:
        found = re.findall(r"\d+", f.stem)
        if not found:
            break
        numbers.append(int(found[-1]))
    if len(numbers) == len(files) and all(b > a for a, b in zip(numbers, numbers[1:])):
        return numbers
    return list(range(1, len(files) + 1))


@dataclass
class Clip:
    """An opened clip. `read(n)` returns the frame numbered n (see the module docstring)."""

    path: Path
    frame_numbers: list[int]
    fps: float | None
    kind: str  # "frames" | "video"
    frame_files: list[Path] = field(default_factory=list, repr=False)
    _video: object = field(default=None, repr=False)
    _backend: str = ""

    def __post_init__(self):
        self._position = {n: i for i, n in enumerate(self.frame_numbers)}

    @property
    def n_frames(self) -> int:
        return len(self.frame_numbers)

    @property
    def first_frame(self) -> int:
        return self.frame_numbers[0]

    @property
    def last_frame(self) -> int:
        return self.frame_numbers[-1]

    @property
    def lossy(self) -> bool:
        """Whether the clip was stored with lossy compression (JPEG frames, or a video codec other
        than a lossless one): perception then smooths before measuring sub-pixel motion."""
        if self.kind == "frames":
            return any(f.suffix.lower() in LOSSY_IMAGE_SUFFIXES for f in self.frame_files[:1])
        if "_lossy" not in self.__dict__:
            try:
                import av

                with av.open(str(self.path)) as container:
                    codec = container.streams.video[0].codec_context.name
            except Exception:
                codec = ""
            self.__dict__["_lossy"] = codec not in LOSSLESS_CODECS
        return self.__dict__["_lossy"]

    def check_frame(self, n: int, what: str = "frame") -> None:
        if n not in self._position:
            raise FrameRangeError(f"{what} {n} is out of range for {self.path} (frames {self.first_frame}..{self.last_frame})")

    def numbers_between(self, first: int, last: int) -> list[int]:
        """Frame numbers n with first <= n <= last, in order."""
        return [n for n in self.frame_numbers if first <= n <= last]

    def read(self, n: int) -> np.ndarray:
        return self.read_many([n])[0]

    def read_many(self, frames: Sequence[int]) -> list[np.ndarray]:
        for n in frames:
            self.check_frame(n)
        index = [self._position[n] for n in frames]
        if self.kind == "frames":
            return [_read_image(self.frame_files[i]) for i in index]
        if self._backend == "decord":
            try:
                batch = self._video.get_batch(index).asnumpy()
            except Exception as e:  # decord raises its own error types
                raise UnreadableClipError(f"cannot decode frames {list(frames)} of {self.path}: {e}") from e
            return [np.ascontiguousarray(f) for f in batch]
        return _pyav_read(self.path, frames)


def open_clip(path: str | Path, fps: float | None = None, limits: ClipLimits | None = None) -> Clip:
    """Open a video file or a frame folder. Raises ClipNotFoundError, EmptyClipError,
    UnreadableClipError or (past `limits`) ClipTooLargeError with the path in the message."""
    path = Path(path)
    fps = check_fps(fps)
    limits = limits or ClipLimits()
    if not path.exists():
        raise ClipNotFoundError(f"clip not found: {path}")
    if path.is_dir():
        files = list_frame_files(path)
        if not files:
            raise EmptyClipError(f"no frames ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
        limits.check(path, len(files), None)
        if limits.max_pixels is not None:
            for f in files:
                limits.check(path, None, image_size(f), what=f"frame {f}")
        return Clip(path, frame_numbers(files), fps, "frames", frame_files=files)
    if path.stat().st_size == 0:
        raise EmptyClipError(f"video file is empty: {path}")
    if limits != ClipLimits():
        _check_video_header(path, limits)
    return _open_video(path, fps, limits)


def _check_video_header(path: Path, limits: ClipLimits) -> None:
    """Frame size and (where the container states it) frame count, read by PyAV from the headers."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnreadableClipError(f"no video stream in {path}")
            stream = container.streams.video[0]
            size = (stream.codec_context.width, stream.codec_context.height)
            frames = stream.frames or None
    except (UnreadableClipError, ClipTooLargeError):
        raise
    except Exception as e:
        raise UnreadableClipError(f"cannot read video {path}: {e}") from e
    limits.check(path, frames, size, what=f"video {path}")


def _read_image(file: Path) -> np.ndarray:
    img = cv2.imread(str(file), cv2.IMREAD_COLOR)
    if img is None:
        raise UnreadableClipError(f"cannot read image {file}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _open_video(path: Path, fps: float | None, limits: ClipLimits) -> Clip:
    decord_error = None
    try:
        import decord

        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        n = len(vr)  # from the index, nothing decoded yet
        if n > 0:
            limits.check(path, n, None)
            return Clip(path, list(range(1, n + 1)), fps or _file_fps(vr.get_avg_fps()), "video", _video=vr,
                        _backend="decord")
    except ImportError:
        pass
    except ClipTooLargeError:
        raise
    except Exception as e:  # decord's DECORDError and friends: try PyAV before giving up
        decord_error = e
    n, video_fps = _pyav_probe(path, decord_error, limits)
    return Clip(path, list(range(1, n + 1)), fps or video_fps, "video", _backend="pyav")


def _pyav_probe(path: Path, earlier: Exception | None, limits: ClipLimits) -> tuple[int, float | None]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnreadableClipError(f"no video stream in {path}")
            stream = container.streams.video[0]
            n = 0
            for _ in container.decode(stream):  # counted by decoding: stop once past the limit
                n += 1
                limits.check(path, n, None)
            rate = _file_fps(stream.average_rate)
    except (UnreadableClipError, ClipTooLargeError):
        raise
    except Exception as e:
        detail = f"{e}" + (f"; decord: {earlier}" if earlier else "")
        raise UnreadableClipError(f"cannot read video {path}: {detail}") from e
    if n == 0:
        raise EmptyClipError(f"video has no frames: {path}")
    return n, rate


def _pyav_read(path: Path, frames: Sequence[int]) -> list[np.ndarray]:
    import av

    wanted = set(frames)
    got: dict[int, np.ndarray] = {}
    last = max(wanted)
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0), start=1):
                if i in wanted:
                    got[i] = frame.to_ndarray(format="rgb24")
                if i >= last:
                    break
    except Exception as e:
        raise UnreadableClipError(f"cannot decode {path}: {e}") from e
    missing = wanted - got.keys()
    if missing:
        raise UnreadableClipError(f"frames {sorted(missing)} could not be decoded from {path}")
    return [got[n] for n in frames]


# --- streaming (long videos) -----------------------------------------------------------------


# Codecs that code every frame on its own (FFV1 flags only its context resets as key frames).
INTRA_ONLY_CODECS = frozenset({"ffv1", "mjpeg", "mjpegb", "ljpeg", "jpegls", "jpeg2000", "png", "rawvideo", "huffyuv",
                               "ffvhuff", "utvideo", "magicyuv", "prores", "dnxhd", "v210", "r210", "qtrle", "tiff"})


class FrameStream:
    """The frames of a video file or a frame folder in order, decoded in a background thread so
    decoding and analysis overlap, never more than `queue_size` frames held. For long videos:
    nothing is indexed or counted up front, and random access is never needed.

    Iterating yields (frame number, image) for frames 1, 1 + every, 1 + 2*every, ... (1-based);
    the frames between are decoded (inter-frame codecs need them) but not converted. `fmt` is
    "gray" (uint8 H x W, from the luma plane: cheapest) or "rgb24". After iteration:
    `n_read` frames were decoded, `error` says why decoding stopped early (a truncated or
    corrupt file; the frames before it were delivered), `notes` lists what a user should know
    (variable frame rate, declared frame count not reached), `inter_coded` whether frames were
    coded from others (H.264 and the like: their key frames and refreshes show as motion)."""

    def __init__(self, path: str | Path, every: int = 1, fmt: str = "gray", fps: float | None = None,
                 queue_size: int = 32):
        self.path = Path(path)
        if not self.path.exists():
            raise ClipNotFoundError(f"clip not found: {self.path}")
        if fmt not in ("gray", "rgb24"):
            raise ValueError(f"unknown frame format {fmt!r}; use gray or rgb24")
        self.every, self.fmt, self.queue_size = max(1, int(every)), fmt, queue_size
        self.n_read = 0
        self.error: str | None = None
        self.notes: list[str] = []
        self._intervals: list[float] = []
        self.keyframes: list[int] = []  # frame numbers of a video's key frames (lossy codecs pulse there)
        self.codec: str | None = None  # the video's codec name, once decoding started
        if self.path.is_dir():
            self._files = list_frame_files(self.path)
            if not self._files:
                raise EmptyClipError(f"no frames ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {self.path}")
            self.kind, self.fps, self.declared_frames = "frames", fps, len(self._files)
            self.frame_numbers = frame_numbers(self._files)
            return
        if self.path.stat().st_size == 0:
            raise EmptyClipError(f"video file is empty: {self.path}")
        import av

        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise UnreadableClipError(f"no video stream in {self.path}")
                s = container.streams.video[0]
                rate = float(s.average_rate) if s.average_rate else None
                self.declared_frames = int(s.frames) if s.frames else None
                if not self.declared_frames and s.duration and rate:
                    self.declared_frames = int(round(float(s.duration * s.time_base) * rate))
        except UnreadableClipError:
            raise
        except Exception as e:
            raise UnreadableClipError(f"cannot read video {self.path}: {e}") from e
        self.kind, self.fps = "video", fps or rate
        if not self.fps:
            raise UnreadableClipError(f"{self.path}: no frame rate in the file; give one (--fps)")

    @property
    def inter_coded(self) -> bool:
        """Frames coded from other frames: a video whose codec is not intra-only and whose key
        frames are sparse (known once decoding has run)."""
        return (self.codec is not None and self.codec not in INTRA_ONLY_CODECS
                and len(self.keyframes) < 0.5 * max(1, self.n_read))

    def __iter__(self):
        import queue
        import threading

        q: queue.Queue = queue.Queue(maxsize=self.queue_size)
        stop = threading.Event()
        done = object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                for item in (self._folder_frames() if self.kind == "frames" else self._video_frames()):
                    if not put(item):
                        return
            except Exception as e:  # handed to the consumer, which raises it with the path
                put(e)
            finally:
                put(done)

        worker = threading.Thread(target=produce, name=f"decode:{self.path.name}", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    break
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join(timeout=5)
        self._finish_notes()

    def _folder_frames(self):
        for i, (f, n) in enumerate(zip(self._files, self.frame_numbers)):
            self.n_read = i + 1
            if i % self.every == 0:
                img = _read_image(f)
                yield n, cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if self.fmt == "gray" else img

    def _video_frames(self):
        import av

        last_t = None
        try:
            container = av.open(str(self.path))
        except Exception as e:
            raise UnreadableClipError(f"cannot read video {self.path}: {e}") from e
        with container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            self.codec = stream.codec_context.name
            try:
                for frame in container.decode(stream):
                    self.n_read += 1
                    if frame.key_frame and len(self.keyframes) < 100_000:
                        self.keyframes.append(self.n_read)
                    if frame.time is not None:
                        if last_t is not None:
                            self._intervals.append(frame.time - last_t)
                        last_t = frame.time
                    if (self.n_read - 1) % self.every == 0:
                        if self.fmt == "gray":
                            img = frame.to_ndarray(format="gray")
                        else:
                            img = frame.to_ndarray(format="rgb24")
                        yield self.n_read, img
            except Exception as e:  # a truncated or corrupt file: keep what came before
                self.error = f"decoding stopped after frame {self.n_read}: {type(e).__name__}: {e}"
        if self.n_read == 0:
            raise EmptyClipError(f"video has no decodable frames: {self.path}" + (f" ({self.error})" if self.error else ""))

    def _finish_notes(self) -> None:
        if self.error:
            self.notes.append(f"truncated or corrupt: {self.error}; the frames before were analysed")
        elif self.declared_frames and self.n_read < 0.98 * self.declared_frames - 1:
            self.notes.append(f"truncated: {self.n_read} of {self.declared_frames} declared frames could be decoded")
        if len(self._intervals) >= 10:
            d = np.asarray(self._intervals)
            med = float(np.median(d))
            if med > 0 and float(np.mean(np.abs(d - med) > 0.25 * med)) > 0.01:
                self.notes.append(f"variable frame rate: frame intervals {d.min() * 1000:.1f}-{d.max() * 1000:.1f} ms "
                                  f"(median {med * 1000:.1f}); frames are numbered in decode order and times use "
                                  f"the average rate {self.fps:g} fps")
