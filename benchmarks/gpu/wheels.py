"""Download, into a folder, the wheels that the GPU machine lacks: every requirement of ours, followed down, that is not
in device-packages.txt. Called by prepare.sh after it built our own wheel into the same folder.

    python benchmarks/gpu/wheels.py .whl

Requirements are read from the wheels' METADATA (our wheel's own, plus its ``test`` extra, since the test suite is
collected there), their markers evaluated for CPython 3.12 on Linux x86-64. Each missing one is downloaded at the
version installed here (the one our tests pass with) when it is installed here, else the newest, one version each,
binary only, for that platform. Exit 1 if one cannot be found.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover - pip always vendors it
    from pip._vendor.packaging.requirements import Requirement

HERE = Path(__file__).resolve().parent
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
# of the test extra: what the gpu-marked tests never need and is large (ruff is a 10 MiB binary for test_lint.py)
SKIP = {"ruff"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages() -> set[str]:
    lines = (HERE / "device-packages.txt").read_text().splitlines()
    return {norm(s.strip()) for s in lines if s.strip() and not s.startswith("#")}


def requirements(wheel: Path, extras: tuple[str, ...] = ()) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    out = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is None or any(req.marker.evaluate({**TARGET, "extra": e}) for e in ("", *extras)):
            out.append(req)
    return out


def wheel_name(wheel: Path) -> str:
    return norm(wheel.name.split("-")[0])


def download(spec: str, folder: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    cmd += ["--implementation", "cp", "-d", str(folder), spec]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr.strip(), file=sys.stderr)
        raise subprocess.CalledProcessError(proc.returncode, cmd)


def main() -> int:
    folder = Path(sys.argv[1])
    ours = sorted(folder.glob("modelsurgeon-*.whl"))
    if len(ours) != 1:
        print(f"wheels.py: expected one modelsurgeon wheel in {folder}, found {len(ours)}", file=sys.stderr)
        return 1
    there = device_packages()
    todo = [(r, "modelsurgeon") for r in requirements(ours[0], ("test",))]
    have = {wheel_name(w) for w in folder.glob("*.whl")}
    while todo:
        req, why = todo.pop(0)
        name = norm(req.name)
        if name in there or name in have or name in SKIP:
            continue
        try:
            version = importlib.metadata.version(req.name)
            spec = f"{req.name}=={version}" if req.specifier.contains(version, prereleases=True) else str(req)
        except importlib.metadata.PackageNotFoundError:
            spec = f"{req.name}{req.specifier}"
        print(f"  {spec:40} (needed by {why})")
        try:
            download(spec, folder)
        except subprocess.CalledProcessError:
            print(f"wheels.py: no wheel of {spec} for CPython 3.12 on manylinux x86-64", file=sys.stderr)
            return 1
        got = [w for w in folder.glob("*.whl") if wheel_name(w) == name]
        have.add(name)
        todo += [(r, req.name) for r in requirements(got[0])]
    return 0


if __name__ == "__main__":
    sys.exit(main())
