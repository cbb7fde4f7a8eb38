"""Install upstream Toto (``toto-ts==0.2.0``) as a test-only oracle.

The wheel is fetched with ``pip download --no-deps`` (its own pins, torch 2.7
among them, are never installed). Its ``toto/`` package is unpacked into the
git-ignored ``.oracle/`` folder under the name ``toto_upstream``: upstream's
model code imports itself relatively, so it sits beside our ``toto`` without
clashing. Then the few packages the oracle needs to import are installed.

Usage: ``python scripts/install_oracle.py [--force]``. Tests find the oracle
through ``tests/oracle.py``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ORACLE_VERSION = "0.2.0"
ORACLE_DEPS = [
    "gluonts==0.16.2",
    "rotary-embedding-torch==0.8.6",
    "lightning",
    "scipy",
    "pandas",
    "beartype",  # imported by upstream's own test suite (tests/test_upstream_suite.py)
]
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".oracle"
TARGET = CACHE / "toto_upstream"


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def unpack_wheel(download_dir: Path) -> None:
    wheels = sorted(download_dir.glob(f"toto_ts-{ORACLE_VERSION}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download produced no toto_ts {ORACLE_VERSION} wheel in {download_dir}")
    staging = download_dir / "unpacked"
    with zipfile.ZipFile(wheels[0]) as archive:
        members = [m for m in archive.namelist() if m.startswith("toto/")]
        archive.extractall(staging, members)
    if TARGET.exists():
        shutil.rmtree(TARGET)
    CACHE.mkdir(exist_ok=True)
    shutil.move(str(staging / "toto"), TARGET)
    (TARGET / "VERSION").write_text(ORACLE_VERSION + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="re-download even if the oracle is present")
    args = parser.parse_args()

    stamp = TARGET / "VERSION"
    if args.force or not stamp.exists() or stamp.read_text().strip() != ORACLE_VERSION:
        with tempfile.TemporaryDirectory() as tmp:
            pip("download", "--no-deps", "--quiet", "-d", tmp, f"toto-ts=={ORACLE_VERSION}")
            unpack_wheel(Path(tmp))
        print(f"oracle: unpacked toto-ts {ORACLE_VERSION} into {TARGET}")
    else:
        print(f"oracle: toto-ts {ORACLE_VERSION} already at {TARGET}")
    pip("install", "--quiet", *ORACLE_DEPS)
    print("oracle: dependencies installed: " + ", ".join(ORACLE_DEPS))


if __name__ == "__main__":
    main()
