"""Build the runtime stub with PyInstaller once per platform, and cache it.

The cache key covers everything that goes into the stub: the runtime and page
sources, the spec, the llama.cpp libraries, and the PyInstaller and Python
versions. A second `build.py` with another model reuses the stub and only packs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.errors import FuroshikiError

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "builder" / "runtime.spec"
STUB_SOURCES = ("runtime", "templates", "builder/runtime.spec", "builder/stub_entry.py")


class StubError(FuroshikiError):
    pass


@dataclass(frozen=True)
class StubInfo:
    path: str
    platform: str
    key: str
    size: int
    sha256: str
    built_at: str
    build_seconds: float
    versions: dict
    origin: str = "built here"

    def to_dict(self) -> dict:
        return asdict(self)


def platform_tag() -> str:
    system = {"linux": "linux", "darwin": "macos", "win32": "windows"}.get(sys.platform, sys.platform)
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "x64": "x86_64", "aarch64": "arm64"}.get(machine, machine)
    return f"{system}-{machine}"


def cache_root() -> Path:
    return Path(os.environ.get("FUROSHIKI_CACHE") or Path.home() / ".cache" / "furoshiki")


def _files(root: Path, rel: str):
    path = root / rel
    if path.is_file():
        yield path
    else:
        yield from sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _versions() -> dict:
    import llama_cpp
    import PyInstaller

    return {"llama_cpp_python": llama_cpp.__version__, "pyinstaller": PyInstaller.__version__,
            "python": platform.python_version()}


def stub_key() -> str:
    import llama_cpp

    h = hashlib.sha256()
    for rel in STUB_SOURCES:
        for path in _files(REPO, rel):
            h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    for path in sorted(lib_dir.glob("*")) if lib_dir.is_dir() else []:
        h.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    h.update(json.dumps([_versions(), platform_tag()], sort_keys=True).encode())
    return h.hexdigest()[:16]


def stub_name(tag: str, variant: str = "") -> str:
    """furoshiki-runtime-<platform>[-<variant>][.exe], the release asset name too."""
    suffix = ".exe" if tag.startswith("windows") else ""
    return f"furoshiki-runtime-{tag}" + (f"-{variant}" if variant else "") + suffix


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_stub(force: bool = False, log=print, variant: str = "") -> StubInfo:
    """Return the host's stub, building it with PyInstaller if the cache has none for these inputs.

    `variant` ("cuda") only names the stub: which GPU modules it carries is
    decided by the llama.cpp libraries installed under llama_cpp/lib.
    """
    tag, key = platform_tag(), stub_key()
    folder = cache_root() / "stubs" / f"{tag}{'-' + variant if variant else ''}-{key}"
    meta = folder / "stub.json"
    if meta.is_file() and not force:
        info = StubInfo(**json.loads(meta.read_text()))
        if Path(info.path).is_file():
            return info
    log(f"building the {tag} runtime stub with PyInstaller (about a minute; cached afterwards) …")
    t0 = time.perf_counter()
    name = stub_name(tag, variant)
    with tempfile.TemporaryDirectory(prefix="furoshiki-stub-") as tmp:
        env = {**os.environ, "FUROSHIKI_STUB_NAME": name.removesuffix(".exe")}
        cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
               "--distpath", f"{tmp}/dist", "--workpath", f"{tmp}/work", str(SPEC)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        built = Path(tmp) / "dist" / name
        if proc.returncode != 0 or not built.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise StubError(f"PyInstaller failed to build the stub (exit {proc.returncode}): {tail}")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        shutil.move(str(built), target)
    info = StubInfo(path=str(target), platform=tag, key=key, size=target.stat().st_size, sha256=_sha256(target),
                    built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    build_seconds=round(time.perf_counter() - t0, 1), versions=_versions())
    meta.write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    log(f"stub ready: {target} ({info.size / 1e6:.1f} MB, {info.build_seconds:.0f} s)")
    return info


def list_stubs() -> list[StubInfo]:
    found = []
    for meta in sorted((cache_root() / "stubs").glob("*/stub.json")):
        info = StubInfo(**json.loads(meta.read_text()))
        if Path(info.path).is_file():
            found.append(info)
    return found
