"""Install upstream Toto 1.0 (``toto-ts==0.2.0``) and Toto 2.0 (``toto-2==2.0.0``) as test-only oracles.

The wheels are fetched with ``pip download --no-deps`` (their own pins, torch 2.7
among them, are never installed). Toto 1.0's ``toto/`` package is unpacked into the
git-ignored ``.oracle/`` folder under the name ``toto_upstream``: upstream's
model code imports itself relatively, so it sits beside our ``toto`` without
clashing. Toto 2.0's ``toto2`` and the u-muP libraries it imports (``dd_unit_scaling``,
``unit_scaling``) keep their names. ``toto-2`` and ``dd-unit-scaling`` declare Python >= 3.12
but run on 3.11, so they are downloaded as 3.12 wheels. Then the few packages the
oracles need to import are installed.

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
# Toto 2.0: (distribution, version, package folder in the wheel)
TOTO2_WHEELS = (("toto-2", "2.0.0", "toto2"), ("dd-unit-scaling", "0.1.0", "dd_unit_scaling"),
                ("unit-scaling", "0.3.5", "unit_scaling"))
ORACLE_DEPS = [
    "gluonts==0.16.2",
    "rotary-embedding-torch==0.8.6",
    "lightning",
    "scipy",
    "pandas",
    "beartype",  # imported by upstream's own test suite (tests/test_upstream_suite.py)
]  # unit_scaling's docstring-parser and tabulate come with the test extra
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".oracle"
TARGET = CACHE / "toto_upstream"
TOTO2_STAMP = CACHE / "TOTO2_VERSIONS"


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


def unpack_toto2(download_dir: Path) -> None:
    """Unpack each Toto 2.0 wheel's package folder into ``.oracle/`` and stamp the set."""
    CACHE.mkdir(exist_ok=True)
    for dist, version, package in TOTO2_WHEELS:
        wheels = sorted(download_dir.glob(f"{dist.replace('-', '_')}-{version}-*.whl"))
        if not wheels:
            raise SystemExit(f"pip download produced no {dist} {version} wheel in {download_dir}")
        staging = download_dir / f"unpacked-{package}"
        with zipfile.ZipFile(wheels[0]) as archive:
            archive.extractall(staging, [m for m in archive.namelist() if m.startswith(f"{package}/")])
        if (CACHE / package).exists():
            shutil.rmtree(CACHE / package)
        shutil.move(str(staging / package), CACHE / package)
    TOTO2_STAMP.write_text(toto2_versions() + "\n")


def toto2_versions() -> str:
    return " ".join(f"{dist}=={version}" for dist, version, _ in TOTO2_WHEELS)


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
    if args.force or not TOTO2_STAMP.exists() or TOTO2_STAMP.read_text().strip() != toto2_versions():
        with tempfile.TemporaryDirectory() as tmp:
            specs = [f"{dist}=={version}" for dist, version, _ in TOTO2_WHEELS]
            pip("download", "--no-deps", "--quiet", "--only-binary=:all:", "--python-version", "3.12", "-d", tmp, *specs)
            unpack_toto2(Path(tmp))
        print(f"oracle: unpacked {toto2_versions()} into {CACHE}")
    else:
        print(f"oracle: {toto2_versions()} already in {CACHE}")
    pip("install", "--quiet", *ORACLE_DEPS)
    print("oracle: dependencies installed: " + ", ".join(ORACLE_DEPS))


if __name__ == "__main__":
    main()
