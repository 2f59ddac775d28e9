#!/usr/bin/env bash
# Build the local test image `discovery-sandbox:test` without any registry.
#
# No base image is pulled: the root filesystem is assembled from this machine. It holds
#   * the base interpreter (sys.base_prefix; same path inside the image, because libpython
#     is found through an absolute RUNPATH), with a stdlib minus tests/idle/tkinter/ensurepip;
#   * torch, numpy, scipy and their runtime requirements (no tests, headers, C++ test
#     binaries; nothing like streamlit, pyarrow, litellm), each at its host path, taken from
#     the site-packages directory the interpreter finds it in: a virtualenv's own, or the
#     base interpreter's;
#   * every shared library those ELF files need (found with ldd), the dynamic loader, and
#     the symlinks along the way (/lib -> usr/lib etc.);
#   * /etc/passwd + /etc/group with `sandbox` = uid/gid 65534, /usr/local/bin/python (the
#     base interpreter: the image has no pyvenv.cfg);
#   * the project's `sandbox/` and `discovery/` packages under /opt/discovery/src, on
#     PYTHONPATH and also through a .pth file in the base interpreter's site-packages, which
#     puts the source dir and any virtualenv site-packages on sys.path (`python -I` too).
# The tarball is streamed straight into `docker import`. The image carries a label with a
# hash of everything that went into it; when that hash is unchanged nothing is rebuilt.
#
# Environment: SANDBOX_PYTHON (interpreter whose torch/numpy/scipy go in; a virtualenv's is
#              fine; default: the active $VIRTUAL_ENV, else the checkout's .venv made by
#              scripts/install.sh ($DISCOVERY_VENV), else `python3` on PATH),
#              SANDBOX_IMAGE (tag; default discovery-sandbox:test), FORCE=1 to rebuild.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
IMAGE=${SANDBOX_IMAGE:-discovery-sandbox:test}
if [[ -n "${SANDBOX_PYTHON:-}" ]]; then
    PY=$SANDBOX_PYTHON
elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
    PY=$VIRTUAL_ENV/bin/python
elif [[ -x "${DISCOVERY_VENV:-$ROOT/.venv}/bin/python" ]]; then
    PY=${DISCOVERY_VENV:-$ROOT/.venv}/bin/python
else
    PY=$(command -v python3 || command -v python)
fi

if ! docker info >/dev/null 2>&1; then
    echo "docker-test-image: no Docker engine reachable (run .ci/docker-engine.sh first)" >&2
    exit 1
fi

SECONDS=0
IMAGE="$IMAGE" PROJECT_ROOT="$ROOT" SCRIPT="${BASH_SOURCE[0]}" FORCE="${FORCE:-0}" "$PY" - <<'PYEOF'
import hashlib
import importlib.metadata as metadata
import io
import json
import os
import re
import stat
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

IMAGE = os.environ["IMAGE"]
PROJECT = Path(os.environ["PROJECT_ROOT"])
SCRIPT = Path(os.environ["SCRIPT"])
FORCE = os.environ.get("FORCE") == "1"
SRC_DIR = "/opt/discovery/src"
LABEL = "discovery.content-hash"
# distributions copied into the image, plus their (non-extra) requirements
ROOT_DISTS = ["torch", "numpy", "scipy"]
PROJECT_PACKAGES = ["sandbox", "discovery"]


def die(msg: str) -> None:
    print(f"docker-test-image: {msg}", file=sys.stderr)
    sys.exit(1)


IN_VENV = sys.prefix != sys.base_prefix
PREFIX = Path(sys.base_prefix)
VER = f"python{sys.version_info.major}.{sys.version_info.minor}"
# the base interpreter: in a virtualenv, sys.executable is a link to it (or a copy of it)
EXE = Path(os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)) if IN_VENV \
    else Path(os.path.realpath(sys.executable))
if IN_VENV and not (EXE.is_file() and EXE.is_relative_to(PREFIX)):
    die(f"cannot find the base interpreter of the virtualenv {sys.prefix} under {PREFIX} (got {EXE})")
if IN_VENV:
    # the base interpreter's own paths: the stdlib, and the site directories its site.py adds
    probe = subprocess.run([str(EXE), "-I", "-B", "-c", "import json, site, sysconfig; print(json.dumps("
                            "[sysconfig.get_paths()['stdlib'], site.getsitepackages()]))"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        die(f"the base interpreter {EXE} of {sys.prefix} does not run: {probe.stderr.strip()[-300:]}")
    _stdlib, BASE_SITE = json.loads(probe.stdout)
    STDLIB = Path(_stdlib)
else:
    import site

    STDLIB = Path(sysconfig.get_paths()["stdlib"])
    BASE_SITE = site.getsitepackages()
BASE_SITE = [Path(p) for p in BASE_SITE]
if not BASE_SITE:
    die(f"{EXE} has no site-packages directory for the .pth file")
# the .pth goes where the base interpreter looks first (its purelib, as before, when it is one of them)
_purelib = Path(sysconfig.get_paths()["purelib"])
PTH_DIR = _purelib if not IN_VENV and _purelib in BASE_SITE else BASE_SITE[0]

STDLIB_SKIP = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip",
               "lib2to3", "__phello__", "pydoc_data"}
SKIP_DIR_NAMES = {"tests"}  # test suites of third-party packages
SITE_SKIP = {"torch/test", "torch/include", "torch/share", "torch/bin", "torchgen/packaged"}
KEEP = {"torch/bin/torch_shm_manager"}

# ---------------------------------------------------------------- choose files
def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


try:
    from packaging.requirements import Requirement
except ImportError:  # a bare base interpreter: no marker evaluation, a missing optional requirement is skipped
    Requirement = None


def requirement_name(req: str):
    """The distribution ``req`` needs here, or None (an extra, or a marker false for this interpreter)."""
    if Requirement is not None:
        try:
            parsed = Requirement(req)
        except Exception:
            parsed = None
        if parsed is not None:
            if parsed.marker is not None and not parsed.marker.evaluate({"extra": ""}):
                return None
            return parsed.name
    if "extra ==" in req:
        return None
    return re.split(r"[<>=!~;\[ (]", req, maxsplit=1)[0]


def closure(roots):
    seen, todo, dists = set(), [(name, True) for name in roots], []
    while todo:
        name, required = todo.pop()
        if canon(name) in seen:
            continue
        seen.add(canon(name))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if required or Requirement is not None:
                die(f"{name} is not installed in {sys.executable}")
            continue
        dists.append(dist)
        for req in dist.requires or []:
            dep = requirement_name(req)
            if dep:
                todo.append((dep, Requirement is not None))
    return dists


def top_levels(dist):
    """Top-level entries of site-packages that belong to ``dist`` (incl. its dist-info)."""
    tops = set()
    for f in dist.files or []:
        first = f.parts[0]
        if first in ("..", "") or first.endswith(".pth"):
            continue
        if first == "__pycache__":
            continue
        tops.add(first)
    return tops


files: list[Path] = []  # host paths, placed at the same path in the image


def walk(top: Path, skip_rel: set[str], rel_base: Path) -> None:
    if top.is_symlink() or not top.is_dir():
        files.append(top)
        return
    for dirpath, dirnames, filenames in os.walk(top):
        d = Path(dirpath)
        rel = d.relative_to(rel_base).as_posix()
        keep_dirs = []
        for name in sorted(dirnames):
            r = f"{rel}/{name}" if rel != "." else name
            if r in skip_rel or name in SKIP_DIR_NAMES:
                files.extend(rel_base / k for k in KEEP if k.startswith(r + "/"))
                continue
            if os.path.islink(d / name):
                files.append(d / name)
                continue
            keep_dirs.append(name)
        dirnames[:] = keep_dirs
        files.append(d)
        files.extend(d / name for name in sorted(filenames))


# interpreter: binary + python/python3 symlinks, libpython, stdlib
for name in ("python", "python3", EXE.name):
    if (PREFIX / "bin" / name).exists():
        files.append(PREFIX / "bin" / name)
files.extend(sorted((PREFIX / "lib").glob(f"libpython{sys.version_info.major}.{sys.version_info.minor}*.so*")))
for entry in sorted(STDLIB.iterdir()):
    if entry.name in STDLIB_SKIP or entry.name.startswith("config-"):
        continue
    walk(entry, set(), STDLIB)

def site_dir(dist) -> Path:
    """The directory ``dist`` is installed in (a virtualenv's site-packages, or the base's)."""
    return Path(os.path.abspath(str(dist.locate_file(""))))


dists = closure(ROOT_DISTS)
site_dirs: list[Path] = []  # where the copied distributions live, in the order they were found
for dist in dists:
    base = site_dir(dist)
    if base not in site_dirs:
        site_dirs.append(base)
    for top in sorted(top_levels(dist)):
        p = base / top
        if p.exists() or p.is_symlink():
            walk(p, SITE_SKIP, base)
# site directories the base interpreter does not add itself go on sys.path through the .pth,
# after the project source (a virtualenv's site-packages, at its host path)
EXTRA_SITE = [str(d) for d in site_dirs if d not in BASE_SITE]
# ...placed at fixed paths in the image, not at their host paths: a checkout under /tmp (as CI's
# clone may be) would put the venv under the container's /tmp tmpfs, which hides it. torch's and
# scipy's shared libraries find each other through $ORIGIN, so moving the tree is safe.
RELOCATED = {host: f"/opt/discovery/site-packages-{i}" for i, host in enumerate(EXTRA_SITE)}


def image_path(path: str) -> str | None:
    """Where a host file of a relocated site directory goes in the image (None: its host path)."""
    for host, target in RELOCATED.items():
        if path == host or path.startswith(host + "/"):
            return target + path[len(host):]
    return None

# ---------------------------------------------------------------- shared libraries
def is_elf(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


elves = [p for p in files if p.is_file() and not p.is_symlink()
         and (".so" in p.name or p.parent.name == "bin") and is_elf(p)]
libs: set[str] = set()
missing: set[str] = set()
for i in range(0, len(elves), 200):
    out = subprocess.run(["ldd", *map(str, elves[i:i + 200])], capture_output=True, text=True).stdout
    for line in out.splitlines():
        line = line.strip()
        m = re.match(r"(\S+) => (\S+) \(0x", line)
        if m:
            libs.add(m.group(2))
        elif "=> not found" in line:
            missing.add(line.split()[0])
        elif re.match(r"/\S+ \(0x", line):  # the dynamic loader
            libs.add(line.split()[0])
# dlopen()ed by glibc itself (thread cancellation, C++ unwinding)
for extra in ("/lib/x86_64-linux-gnu/libgcc_s.so.1", "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1"):
    if os.path.exists(extra):
        libs.add(extra)
        break
# everything ldd found except what is already copied (when the prefix is /usr, libc & co. live under it)
copied = {os.path.normpath(str(p)) for p in files}
host_libs = sorted(p for p in libs if os.path.normpath(p) not in copied)
if missing:
    # ldd's "not found" is usually an optional extension module dependency
    print(f"docker-test-image: note: unresolved libraries: {', '.join(sorted(missing))}", file=sys.stderr)

# ---------------------------------------------------------------- project source
project_files: list[tuple[str, bytes, int]] = []
for pkg in PROJECT_PACKAGES:
    base = PROJECT / pkg
    if not base.is_dir():
        die(f"{base} is missing")
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")) or name.startswith("."):
                continue
            p = Path(dirpath) / name
            project_files.append((p.relative_to(PROJECT).as_posix(), p.read_bytes(), p.stat().st_mode))

# ---------------------------------------------------------------- content hash
PTH_TEXT = "".join(f"{line}\n" for line in [SRC_DIR, *RELOCATED.values()])

h = hashlib.sha256()
h.update(SCRIPT.read_bytes())
h.update(PTH_TEXT.encode())
for p in files + [Path(x) for x in host_libs]:
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        continue
    h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\n".encode())
for rel, data, _ in project_files:
    h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
digest = h.hexdigest()[:16]

existing = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, text=True)
old_id = None
if existing.returncode == 0:
    info = json.loads(existing.stdout)[0]
    old_id = info["Id"]
    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get(LABEL) == digest and not FORCE:
        print(f"docker-test-image: {IMAGE} is up to date (content hash {digest})", file=sys.stderr)
        sys.exit(0)

# ---------------------------------------------------------------- tarball
class Tar:
    def __init__(self, fileobj):
        self.tar = tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT)
        self.done: set[str] = set()

    def _info(self, arc: str, kind, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
        ti = tarfile.TarInfo(arc.lstrip("/"))
        ti.type, ti.mode, ti.size, ti.linkname = kind, mode, size, link
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        ti.mtime = 0
        return ti

    def dir(self, arc: str, mode: int = 0o755) -> None:
        arc = os.path.normpath(arc)
        if arc in self.done or arc == "/":
            return
        self.dir(os.path.dirname(arc))
        self.done.add(arc)
        self.tar.addfile(self._info(arc, tarfile.DIRTYPE, mode | 0o555))

    def data(self, arc: str, data: bytes, mode: int = 0o644) -> None:
        self.dir(os.path.dirname(arc))
        self.done.add(arc)
        self.tar.addfile(self._info(arc, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))

    def symlink(self, arc: str, target: str) -> None:
        self.dir(os.path.dirname(arc))
        self.done.add(arc)
        self.tar.addfile(self._info(arc, tarfile.SYMTYPE, 0o777, link=target))

    def host(self, path: str) -> None:
        """Add host ``path`` at the same place, following (and recording) symlinks on the way."""
        path = os.path.normpath(path)
        if path in self.done or path == "/":
            return
        parts = path.strip("/").split("/")
        cur = ""
        for i, part in enumerate(parts):
            cur = f"{cur}/{part}"
            if os.path.islink(cur):
                if cur not in self.done:
                    self.symlink(cur, os.readlink(cur))
                real = os.path.normpath(os.path.join(os.path.dirname(cur), os.readlink(cur), *parts[i + 1:]))
                if os.path.exists(real):
                    self.host(real)
                return
            if i < len(parts) - 1:
                if cur not in self.done:
                    self.dir(cur, stat.S_IMODE(os.stat(cur).st_mode))
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            self.dir(path, stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            self.done.add(path)
            ti = self._info(path, tarfile.REGTYPE, stat.S_IMODE(st.st_mode) | 0o444, st.st_size)
            ti.mtime = int(st.st_mtime)
            with open(path, "rb") as fh:
                self.tar.addfile(ti, fh)

    def moved(self, path: str, arc: str) -> None:
        """Add host ``path`` (a directory, file or link, not followed) at ``arc`` in the image."""
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            self.symlink(arc, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            self.dir(arc, stat.S_IMODE(st.st_mode))
        elif stat.S_ISREG(st.st_mode):
            self.dir(os.path.dirname(arc))
            self.done.add(arc)
            ti = self._info(arc, tarfile.REGTYPE, stat.S_IMODE(st.st_mode) | 0o444, st.st_size)
            ti.mtime = int(st.st_mtime)
            with open(path, "rb") as fh:
                self.tar.addfile(ti, fh)

    def close(self) -> None:
        self.tar.close()


passwd = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    "sandbox:x:65534:65534:sandbox:/tmp:/usr/sbin/nologin\n"
)
group = "root:x:0:\nsandbox:x:65534:\n"
changes = [
    f"LABEL {LABEL}={digest}",
    f"LABEL org.opencontainers.image.title=discovery-sandbox-test",
    f"ENV PATH=/usr/local/bin:/usr/bin:/bin",
    f"ENV PYTHONPATH={SRC_DIR}",
    "ENV HOME=/tmp",
    "ENV LANG=C.UTF-8",
    "ENV PYTHONDONTWRITEBYTECODE=1",
    "USER 65534:65534",
    "WORKDIR /job",
    'CMD ["python"]',
]
cmd = ["docker", "import"]
for c in changes:
    cmd += ["--change", c]
cmd += ["-", IMAGE]
proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
tar = Tar(proc.stdin)
try:
    for d in ("/proc", "/sys", "/dev", "/etc", "/job", "/usr/bin", "/bin", "/usr/local/bin"):
        if not os.path.islink(d):
            tar.dir(d)
        else:
            tar.host(d)
    tar.dir("/tmp", 0o1777)
    tar.data("/etc/passwd", passwd.encode())
    tar.data("/etc/group", group.encode())
    for p in files:
        target = image_path(os.path.normpath(str(p)))
        if target is None:
            tar.host(str(p))
        else:
            tar.moved(str(p), target)
    for p in host_libs:
        tar.host(p)
    tar.symlink("/usr/local/bin/python", str(PREFIX / "bin" / EXE.name))
    tar.symlink("/usr/local/bin/python3", str(PREFIX / "bin" / EXE.name))
    for rel, data, mode in project_files:
        tar.data(f"{SRC_DIR}/{rel}", data, stat.S_IMODE(mode) | 0o444)
    tar.data(str(PTH_DIR / "discovery-sandbox-src.pth"), PTH_TEXT.encode())
    tar.close()
finally:
    proc.stdin.close()
    rc = proc.wait()
if rc != 0:
    die(f"docker import failed with exit code {rc}")

new_id = json.loads(subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True,
                                   text=True, check=True).stdout)[0]["Id"]
if old_id and old_id != new_id:
    # the previous build is now dangling; drop it unless a container still uses it
    subprocess.run(["docker", "image", "rm", old_id], capture_output=True)
print(f"docker-test-image: built {IMAGE} ({new_id[7:19]}, content hash {digest}, "
      f"{len(files)} interpreter files, {len(host_libs)} host libraries) from {EXE}"
      + (f" with the site-packages of the virtualenv {sys.prefix}" if IN_VENV else ""), file=sys.stderr)
PYEOF

# smoke test: the image must import torch and the project, also isolated (-I: no PYTHONPATH, so
# through the .pth file), with the job runner's module
docker run --rm --network none --read-only "$IMAGE" \
    python -c "import torch, numpy, sandbox, discovery; print('torch', torch.__version__)" >&2
docker run --rm --network none --read-only "$IMAGE" \
    python -I -c "import torch, numpy, scipy, sandbox.jail.runner, discovery; torch.ones(2).sum().item()" >&2
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
echo "docker-test-image: $IMAGE size $((size / 1000000)) MB, ${SECONDS} s" >&2
echo "$IMAGE"
