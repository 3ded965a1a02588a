"""Copy the host's cached stub to a release folder under its asset name, with a .sha256 beside it.

    python -m builder.release_asset [--variant cuda] [--out dist/release]

Prints `name=<asset name>` for GitHub Actions' $GITHUB_OUTPUT.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

from builder.stub import build_stub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="")
    parser.add_argument("--out", type=Path, default=Path("dist/release"))
    args = parser.parse_args()
    info = build_stub(variant=args.variant, log=lambda m: None)
    name = Path(info.path).name
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / name
    shutil.copy2(info.path, target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    # The format `sha256sum --check` reads.
    (args.out / f"{name}.sha256").write_text(f"{digest}  {name}\n")
    print(f"name={name}")


if __name__ == "__main__":
    main()
