"""Write a hash-pinned lock file from an environment that passed the suite (`make lock`).

    python scripts/lock.py --python .venv/bin/python --out requirements/test.lock

Reads `pip freeze` of that environment (the project itself and the torch build chosen by the
Makefile's TORCH are left out: torch is installed first, from its own index), and for each
`name==version` asks the package index's simple API (PEP 691 JSON) for the sha256 of every file of
that release that a Linux machine may pick (manylinux/musllinux/any wheels and the sdist), so
`pip install --require-hashes -r LOCK` installs exactly what was tested, on x86-64 and arm64 alike.
Needs the index (network); the Makefile only reads the result.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

# pip's own copy of `packaging`: the interpreter running this script needs nothing installed
from pip._vendor.packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from pip._vendor.packaging.version import InvalidVersion, Version

INDEX = "https://pypi.org/simple"
LEFT_OUT = {"deramos", "torch", "pip", "setuptools", "wheel"}
FOREIGN_PLATFORM = re.compile(r"^(macosx|win32|win_amd64|win_arm64|ios|android)")


def pinned(python: str) -> list[tuple[str, str]]:
    frozen = subprocess.run([python, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True,
                            text=True, check=True).stdout
    pins = []
    for line in frozen.splitlines():
        name, sep, version = line.partition("==")
        if sep and canonicalize_name(name) not in LEFT_OUT:
            pins.append((canonicalize_name(name), version.strip()))
    return sorted(pins)


def release_hashes(name: str, version: str) -> list[str]:
    request = urllib.request.Request(f"{INDEX}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        files = json.load(answer)["files"]
    hashes = sorted({f["hashes"]["sha256"] for f in files
                     if _is_release_file(f["filename"], name, version)})
    if not hashes:
        raise SystemExit(f"error: {name}=={version}: the index lists no file of that release")
    return hashes


def _is_release_file(filename: str, name: str, version: str) -> bool:
    try:
        if filename.endswith(".whl"):
            dist, found, _, tags = parse_wheel_filename(filename)
            if all(FOREIGN_PLATFORM.search(tag.platform) for tag in tags):
                return False
        elif filename.endswith((".tar.gz", ".zip")):
            dist, found = parse_sdist_filename(filename)
        else:
            return False
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return False
    return canonicalize_name(dist) == name and found == Version(version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", required=True, help="interpreter of the environment to lock")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    version = subprocess.run([args.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    lines = [f"# Locked by scripts/lock.py from an environment on Python {version} that passed `make test`.",
             "# Regenerate with `make lock` after `make test-latest` passes; do not edit by hand."]
    for name, pin in pinned(args.python):
        hashes = release_hashes(name, pin)
        lines.append(f"{name}=={pin} \\\n" + " \\\n".join(f"    --hash=sha256:{h}" for h in hashes))
        print(f"{name}=={pin}: {len(hashes)} files", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
