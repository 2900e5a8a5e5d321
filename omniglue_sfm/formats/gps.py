"""GPS positions from photos' EXIF (Pillow), validated, and written back (test scenes, tools).

A tag is read from the EXIF GPS IFD: latitude and longitude (degrees, minutes, seconds with their
N/S and E/W references), altitude (metres, below sea level when ``GPSAltitudeRef`` is 1) and, when
the camera wrote it, the horizontal accuracy ``GPSHPositioningError`` (metres).

A photo without latitude or longitude has no fix (``None``). A tag that is there but cannot be a
position is an error, :class:`GpsTagError`, naming the file and the value:

* latitude 0 and longitude 0 together: cameras and phones write zeros when they had no fix
  ("null island"), not a place anyone photographed;
* latitude beyond +-90, longitude beyond +-180, a value that is not a finite number or a
  reference other than N/S, E/W;
* altitude below ``MIN_ALTITUDE`` or above ``MAX_ALTITUDE`` (metres);
* accuracy zero, negative or above ``MAX_ACCURACY`` (metres).

Altitude is stored as written (EXIF means height above sea level; COLMAP and this package treat it
as ellipsoidal height, which shifts the whole model vertically by the local geoid height, a few
tens of metres at most, and changes no distance).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import ExifTags, Image

MIN_ALTITUDE = -1_000.0  # metres: the Dead Sea shore is at -430
MAX_ALTITUDE = 20_000.0  # metres: above the highest drones and most aircraft photography
MAX_ACCURACY = 10_000.0  # metres: a larger accuracy is no position at all
NULL_ISLAND_DEG = 1e-7  # |lat|, |lon| below this together: the 0, 0 a camera writes without a fix

_GPS = ExifTags.GPS


class GpsTagError(ValueError):
    """A photo's EXIF GPS tag is there but cannot be a position (see the module docstring)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"bad EXIF GPS in {path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class GpsFix:
    """One photo's position: WGS84 degrees, metres; ``accuracy``: horizontal, metres (None: unknown)."""

    lat: float
    lon: float
    alt: float | None = None
    accuracy: float | None = None

    def lla(self, default_alt: float = 0.0) -> tuple[float, float, float]:
        return self.lat, self.lon, self.alt if self.alt is not None else default_alt

    def todict(self) -> dict:
        return asdict(self)


def _number(value: object) -> float:
    try:
        number = float(value)  # IFDRational, int, float; a zero denominator gives nan
    except (TypeError, ValueError, ZeroDivisionError):
        return math.nan
    return number


def _degrees(value: object) -> float:
    """(degrees, minutes, seconds) or a single number -> decimal degrees (nan when malformed)."""
    if isinstance(value, (tuple, list)):
        parts = [_number(v) for v in value]
        if not 1 <= len(parts) <= 3:
            return math.nan
        return sum(p / 60.0 ** i for i, p in enumerate(parts))
    return _number(value)


def _ref(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip("\x00 ").upper() if value is not None else ""


def parse_gps_ifd(gps: dict, where: Path | str) -> GpsFix | None:
    """A GPS IFD (tag number -> value, as Pillow reads it) -> a validated fix, or None without one."""
    if _GPS.GPSLatitude not in gps or _GPS.GPSLongitude not in gps:
        return None
    lat, lon = _degrees(gps[_GPS.GPSLatitude]), _degrees(gps[_GPS.GPSLongitude])
    lat_ref, lon_ref = _ref(gps.get(_GPS.GPSLatitudeRef, "N")), _ref(gps.get(_GPS.GPSLongitudeRef, "E"))
    if lat_ref not in ("N", "S", "") or lon_ref not in ("E", "W", ""):
        raise GpsTagError(where, f"latitude/longitude references {lat_ref!r}/{lon_ref!r} are not N/S, E/W")
    if not (math.isfinite(lat) and math.isfinite(lon)):
        raise GpsTagError(where, "latitude or longitude is not a number")
    lat, lon = (-lat if lat_ref == "S" else lat), (-lon if lon_ref == "W" else lon)
    if abs(lat) < NULL_ISLAND_DEG and abs(lon) < NULL_ISLAND_DEG:
        raise GpsTagError(where, "latitude 0, longitude 0: the camera had no GPS fix")
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise GpsTagError(where, f"latitude {lat:g}, longitude {lon:g} is not a place on Earth "
                                 "(latitude within +-90, longitude within +-180)")
    alt = None
    if _GPS.GPSAltitude in gps:
        alt = _number(gps[_GPS.GPSAltitude])
        ref = gps.get(_GPS.GPSAltitudeRef, b"\x00")
        below = (ref[:1] == b"\x01") if isinstance(ref, bytes) else _number(ref) == 1
        alt = -alt if below else alt
        if not (math.isfinite(alt) and MIN_ALTITUDE <= alt <= MAX_ALTITUDE):
            raise GpsTagError(where, f"altitude {alt:g} m is outside {MIN_ALTITUDE:g} .. {MAX_ALTITUDE:g} m")
    accuracy = None
    if _GPS.GPSHPositioningError in gps:
        accuracy = _number(gps[_GPS.GPSHPositioningError])
        if not (math.isfinite(accuracy) and 0.0 < accuracy <= MAX_ACCURACY):
            raise GpsTagError(where, f"horizontal accuracy {accuracy:g} m is not within "
                                     f"0 .. {MAX_ACCURACY:g} m")
    return GpsFix(lat, lon, alt, accuracy)


def read_gps(path: Path | str) -> GpsFix | None:
    """The photo's GPS fix, None when it has none; :class:`GpsTagError` when the tag is bad. A file
    Pillow cannot open has no fix here (reading the pixels reports it)."""
    try:
        with Image.open(path) as img:
            gps = dict(img.getexif().get_ifd(ExifTags.IFD.GPSInfo))
    except (OSError, ValueError, SyntaxError):
        return None
    return parse_gps_ifd(gps, path) if gps else None


@dataclass
class GpsScan:
    """The GPS of a list of photos: their fixes, those without one, those with a bad tag."""

    fixes: dict[str, GpsFix]
    missing: list[str]
    bad: dict[str, str]  # name -> why

    @property
    def fraction(self) -> float:
        total = len(self.fixes) + len(self.missing) + len(self.bad)
        return len(self.fixes) / total if total else 0.0

    def digest(self) -> str:
        """Changes when any fix changes (a re-tagged photo invalidates what used its position)."""
        text = json.dumps({n: f.todict() for n, f in sorted(self.fixes.items())}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def bad_message(self) -> str:
        first = list(self.bad.items())[:3]
        more = f" (and {len(self.bad) - 3} more)" if len(self.bad) > 3 else ""
        listed = "; ".join(f"{name}: {why}" for name, why in first)
        return f"{len(self.bad)} photo(s) have a bad EXIF GPS tag: {listed}{more}"


def scan(image_dir: Path | str, names: Sequence[str]) -> GpsScan:
    """Read every photo's GPS tag (header only: fast)."""
    image_dir = Path(image_dir)
    fixes, missing, bad = {}, [], {}
    for name in names:
        try:
            fix = read_gps(image_dir / name)
        except GpsTagError as err:
            bad[name] = err.reason
            continue
        if fix is None:
            missing.append(name)
        else:
            fixes[name] = fix
    return GpsScan(fixes, missing, bad)


def _dms(value: float) -> tuple[float, float, float]:
    value = abs(value)
    degrees = math.floor(value)
    minutes = math.floor((value - degrees) * 60.0)
    seconds = (value - degrees - minutes / 60.0) * 3600.0
    return float(degrees), float(minutes), seconds


def write_gps(src: Path | str, dst: Path | str, fix: GpsFix | None, quality: int = 95) -> None:
    """Copy the photo ``src`` to ``dst`` with ``fix`` as its EXIF GPS tag (None: without one);
    the other EXIF tags are kept. JPEG pixels are re-encoded at ``quality``."""
    with Image.open(src) as img:
        exif = img.getexif()
        img.load()
        exif.get_ifd(ExifTags.IFD.GPSInfo).clear()
        if fix is not None:
            gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
            gps[_GPS.GPSVersionID] = b"\x02\x03\x00\x00"
            gps[_GPS.GPSLatitudeRef] = "S" if fix.lat < 0 else "N"
            gps[_GPS.GPSLatitude] = _dms(fix.lat)
            gps[_GPS.GPSLongitudeRef] = "W" if fix.lon < 0 else "E"
            gps[_GPS.GPSLongitude] = _dms(fix.lon)
            if fix.alt is not None:
                gps[_GPS.GPSAltitudeRef] = b"\x01" if fix.alt < 0 else b"\x00"
                gps[_GPS.GPSAltitude] = abs(fix.alt)
            if fix.accuracy is not None:
                gps[_GPS.GPSHPositioningError] = fix.accuracy
        kwargs = {"quality": quality} if img.format == "JPEG" else {}
        img.save(dst, exif=exif, **kwargs)
