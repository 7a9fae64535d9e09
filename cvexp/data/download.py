"""Download the official CIFAR-10 archive with checksum verification."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from cvexp.errors import UserError

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
_CHUNK = 1 << 20


def download_official(root: Path, *, url: str = OFFICIAL_URL, md5: str = OFFICIAL_MD5) -> Path:
    """Fetch the archive into `root`, verify its md5, and return its path.

    The file is written under a temporary name and renamed only once its checksum
    matches, so an interrupted or corrupt download never looks like a dataset.
    """
    root.mkdir(parents=True, exist_ok=True)
    target = root / Path(url).name
    partial = target.with_name(target.name + ".part")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as err:
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise UserError(
            f"Could not download CIFAR-10 from {url} ({reason}); the machine may be offline, "
            f"so put a copy in data.root (now {root}) or set CVEXP_DATA to a folder that holds one."
        ) from None
    if digest.hexdigest() != md5:
        partial.unlink(missing_ok=True)
        raise UserError(
            f"The download from {url} has md5 {digest.hexdigest()}, not {md5}; it is corrupt, "
            "so try again, or copy a good cifar-10-python.tar.gz into data.root."
        )
    os.replace(partial, target)
    return target
