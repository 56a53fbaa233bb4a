"""Builds the operator's container image, with or without a Docker engine, and runs
its command from the image's own root filesystem.

Where a Docker engine answers, ``docker build`` builds the Dockerfile as it stands,
on its pinned python base. Without one, Debian's podman builds it with chroot
isolation on a local Debian base: debootstrap makes a minimal bookworm root
filesystem with python3, ``podman import`` turns it into the image that the
Dockerfile's ``BASE_IMAGE`` names, and no registry is involved. ``podman run``
needs cgroups and rlimits that such machines may refuse, so :func:`root_command`
runs the entry point by ``chroot`` into the mounted image instead: as the image's
user, with its environment, the root filesystem read-only and a scratch folder at
/tmp, as the chart runs the operator's pod.

Both are cached by content in the cache folder: the base's root filesystem by the
debootstrap inputs, the image (saved as an archive beside it) by a hash of the
Dockerfile, the .dockerignore and the build context that it admits. A warm run finds
or loads the image in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Literal

from hybrid_compute.dev.toolchain import ToolchainError, cache_home, install_with_apt, run_step
from hybrid_compute.plan.settings import OPERATOR_IMAGE

IMAGE_REPOSITORY = "localhost/hybrid-compute"
BASE_REPOSITORY = "localhost/hybrid-compute-base"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What the Dockerfile's stages run: python3 with its venv module, and the CA
# certificates pip checks the package index against.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
PODMAN_PACKAGES = ("podman", "debootstrap")
KEPT_IMAGES = 2
"""Content-tagged images (and their archives) kept; older ones are removed."""

Builder = Literal["docker", "podman"]

# Debian's pip reads this bundle (its certifi is patched to), so mounting the
# host's bundle here while building lets pip trust whatever the host trusts, such
# as a proxy's CA, without the bundle ending up in the image.
_DEBIAN_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Runs in a private mount namespace, on the host: makes the image's root
# read-only, puts the scratch folder at its /tmp, then executes the rest.
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_READ_ONLY_ROOT_SCRIPT = (
    'set -e; mount --bind "$1" "$1"; mount -o remount,bind,ro "$1"; '
    'mount --bind "$2" "$1/tmp"; shift 2; exec "$@"'
)


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image's configuration that say how a container runs it."""

    user: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[str, ...]
    """``NAME=value`` entries."""
    working_dir: str

    @classmethod
    def from_inspect(cls, config: dict[str, Any]) -> ImageConfig:
        """From the ``Config`` object of ``docker/podman image inspect``."""
        return cls(user=config.get("User") or "",
                   entrypoint=tuple(config.get("Entrypoint") or ()),
                   cmd=tuple(config.get("Cmd") or ()),
                   env=tuple(config.get("Env") or ()),
                   working_dir=config.get("WorkingDir") or "")


@dataclass(frozen=True)
class BuiltImage:
    """An image built from the checkout, tagged by the hash of what went into it."""

    builder: Builder
    key: str

    @property
    def reference(self) -> str:
        return f"{IMAGE_REPOSITORY}:{self.key}"


def image_folder() -> Path:
    return cache_home() / "image"


def context_files(repository: Path) -> list[Path]:
    """The files of the build context (relative to ``repository``), as the
    .dockerignore admits them."""
    included, excluded = _read_dockerignore(repository / ".dockerignore")
    files: list[Path] = []
    for entry in included:
        top = repository / entry
        if top.is_file():
            files.append(Path(entry))
        for folder, folders, names in os.walk(top):
            folders[:] = [name for name in folders if not _matches(name, excluded)]
            files += [Path(folder, name).relative_to(repository)
                      for name in names if not _matches(name, excluded)]
    return sorted(files)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch(name, pattern) for pattern in patterns)


def _read_dockerignore(path: Path) -> tuple[list[str], list[str]]:
    """The admitted paths and the excluded name patterns of a .dockerignore that
    excludes everything (``*``), admits paths (``!path``), then excludes names at any
    depth (``**/name``): the form the cache key can follow exactly."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    if rules[:1] != ["*"]:
        raise ToolchainError(f"{path}: the image's cache key expects '*' as the first rule")
    included: list[str] = []
    excluded: list[str] = []
    for rule in rules[1:]:
        if rule.startswith("!") and not any(ch in rule for ch in "*?[") and not excluded:
            included.append(rule[1:].strip("/"))
        elif rule.startswith("**/") and "/" not in rule[3:]:
            excluded.append(rule[3:])
        else:
            raise ToolchainError(
                f"{path}: the rule {rule!r} is not one the image's cache key follows "
                "('*' first, then '!path' rules, then '**/name' rules); change "
                "hybrid_compute.dev.image.context_files along with it")
    return included, excluded


def image_key(repository: Path, builder: Builder, base_image: str | None) -> str:
    """A hash of the builder, the base and every file the build reads."""
    digest = hashlib.sha256()
    digest.update(f"{builder}\0{base_image or 'the Dockerfile base'}\0".encode())
    for name in (Path("Dockerfile"), Path(".dockerignore"), *context_files(repository)):
        content = (repository / name).read_bytes()
        digest.update(f"{name.as_posix()}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:16]


def base_key() -> str:
    """A hash of the debootstrap inputs of the local base."""
    inputs = [DEBIAN_SUITE, "minbase", DEBIAN_MIRROR, platform.machine(), *BASE_PACKAGES]
    return hashlib.sha256("\0".join(inputs).encode()).hexdigest()[:16]


def docker_engine_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def unusable_reason() -> str | None:
    """Why images cannot be built and run from their root filesystem on this
    machine, None when they can."""
    if os.geteuid() != 0:
        return (f"running the image's command from its root filesystem needs root (a "
                f"mount namespace and chroot); this runs as uid {os.geteuid()}")
    if docker_engine_answers():
        return None
    missing = [name for name in PODMAN_PACKAGES if shutil.which(name) is None]
    if missing:
        return (f"no Docker engine answers and {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not installed "
                "(`make image` installs podman and debootstrap with apt-get)")
    info = subprocess.run(["podman", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"podman does not work here: {_tail(info.stderr or info.stdout, 5)}"
    return None


def ensure_image(repository: Path, install_missing: bool = False,
                 base_image: str | None = None, log: bool = True) -> BuiltImage:
    """The image of ``repository``'s current sources, built only when no image or
    archive of the same content exists; it is also tagged as the chart names it."""
    builder = _choose_builder(install_missing, log)
    local_base = builder == "podman" and base_image is None
    base = f"{BASE_REPOSITORY}:{base_key()}" if local_base else base_image
    image = BuiltImage(builder, image_key(repository, builder, base))
    archive = image_folder() / f"image-{image.key}.tar"
    started = time.monotonic()
    if _has_image(builder, image.reference):
        _say(log, f"image {image.reference} is up to date")
    elif builder == "podman" and archive.exists():
        run_step(["podman", "load", "--input", str(archive)], "loading the cached image")
        if not _has_image(builder, image.reference):
            raise ToolchainError(f"{archive} did not hold {image.reference}; remove it and "
                                 "build again")
        _say(log, f"image {image.reference} loaded from the cache in "
                  f"{time.monotonic() - started:.0f}s")
    else:
        _say(log, f"building {image.reference} with {builder} (base: "
                  f"{base or 'the Dockerfile default'}) ...")
        if local_base:
            _ensure_base(log)
        started = time.monotonic()
        _build(repository, image, base, local_base)
        if builder == "podman":
            _save(image, archive)
            _remove_old_images()
        _say(log, f"  image built in {time.monotonic() - started:.0f}s")
    run_step([builder, "tag", image.reference, OPERATOR_IMAGE], "tagging the image")
    return image


def _say(log: bool, message: str) -> None:
    if log:
        print(message, file=sys.stderr)


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _choose_builder(install_missing: bool, log: bool) -> Builder:
    if docker_engine_answers():
        return "docker"
    missing = [name for name in PODMAN_PACKAGES if shutil.which(name) is None]
    if missing:
        if not install_missing:
            raise ToolchainError(
                f"no Docker engine answers, and building the image without one needs "
                f"{' and '.join(PODMAN_PACKAGES)}: install them (Debian/Ubuntu: apt-get "
                f"install {' '.join(PODMAN_PACKAGES)}), or run `make image`, which does")
        install_with_apt(missing, "no Docker engine answers: the image is built with "
                         "podman instead", log)
    return "podman"


def _has_image(builder: Builder, reference: str) -> bool:
    command = [builder, "image", "inspect", reference]
    return subprocess.run(command, capture_output=True).returncode == 0


def _ensure_base(log: bool) -> None:
    """Puts the local Debian base into podman's store, imported from the cached root
    filesystem, which debootstrap makes first when it is missing."""
    key = base_key()
    reference = f"{BASE_REPOSITORY}:{key}"
    if _has_image("podman", reference):
        return
    archive = image_folder() / f"base-{key}.tar"
    if not archive.exists():
        _debootstrap(archive, log)
    started = time.monotonic()
    run_step(["podman", "import", str(archive), reference], "importing the base")
    _say(log, f"base {reference} imported in {time.monotonic() - started:.0f}s")


def _debootstrap(archive: Path, log: bool) -> None:
    _say(log, f"making a Debian {DEBIAN_SUITE} root filesystem with "
              f"{', '.join(BASE_PACKAGES)} by debootstrap (once) ...")
    started = time.monotonic()
    archive.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="base-", dir=archive.parent))
    rootfs = work / "rootfs"
    try:
        run_step(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                  DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR], "debootstrap of the base")
        # Downloaded packages and package lists would only weigh down every image.
        for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftovers).iterdir():
                if path.is_file():
                    path.unlink()
        partial = work / "base.tar"
        run_step(["tar", "--create", "--file", str(partial), "--directory", str(rootfs), "."],
                 "packing the base root filesystem")
        partial.replace(archive)
    finally:
        _remove_work_folder(work)
    _say(log, f"  root filesystem ready in {time.monotonic() - started:.0f}s")


def _remove_work_folder(work: Path) -> None:
    """Removes debootstrap's work folder, first unmounting what a failed run may have
    left mounted in it (/proc, /sys, a bound /dev), so removal never reaches the host."""
    inside = [point for point in _mount_points() if point.is_relative_to(work)]
    for point in sorted(inside, key=lambda p: len(p.parts), reverse=True):
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True)
    if any(point.is_relative_to(work) for point in _mount_points()):
        raise ToolchainError(f"{work} still has file systems mounted; unmount them and "
                             "remove it by hand")
    shutil.rmtree(work, ignore_errors=True)


def _mount_points() -> list[Path]:
    with open("/proc/self/mounts") as mounts:
        fields = [line.split()[1] for line in mounts if line.strip()]
    # /proc/self/mounts writes spaces, tabs, newlines and backslashes as octal escapes.
    return [Path(_OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field))
            for field in fields]


def _build(repository: Path, image: BuiltImage, base: str | None, local_base: bool) -> None:
    command = [image.builder, "build", "--tag", image.reference,
               "--file", str(repository / "Dockerfile")]
    if base is not None:
        command += ["--build-arg", f"BASE_IMAGE={base}"]
    if image.builder == "podman":
        # Content-keyed already: layer caching would only leave intermediate images.
        command += ["--isolation", "chroot", "--layers=false"]
        host_bundle = ssl.get_default_verify_paths().cafile
        if local_base and host_bundle:
            command += ["--pull=never", "--volume", f"{host_bundle}:{_DEBIAN_CA_BUNDLE}:ro"]
    command.append(str(repository))
    build_log = image_folder() / f"build-{image.key}.log"
    build_log.parent.mkdir(parents=True, exist_ok=True)
    with build_log.open("w") as output:
        result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise ToolchainError(f"{image.builder} build failed (whole log: {build_log}):\n"
                             f"{_tail(build_log.read_text(), 25)}")
    build_log.unlink()


def _save(image: BuiltImage, archive: Path) -> None:
    partial = archive.with_suffix(".partial")
    run_step(["podman", "save", "--format", "docker-archive", "--output", str(partial),
              image.reference], "saving the image to the cache")
    partial.replace(archive)


def _remove_old_images() -> None:
    """Keeps the newest :data:`KEPT_IMAGES` content-tagged images and archives."""
    archives = sorted(image_folder().glob("image-*.tar"), key=lambda p: p.stat().st_mtime,
                      reverse=True)
    for old in archives[KEPT_IMAGES:]:
        old.unlink(missing_ok=True)
    listing = run_step(["podman", "images", "--format", "json",
                        "--filter", f"reference={IMAGE_REPOSITORY}"], "listing images")
    # podman lists an image once per name it has.
    unique = {entry["Id"]: entry for entry in json.loads(listing or "[]")}
    images = sorted(unique.values(), key=lambda entry: entry.get("Created", 0), reverse=True)
    for old in images[KEPT_IMAGES:]:
        for name in old.get("Names") or ():
            if name.startswith(f"{IMAGE_REPOSITORY}:"):
                # An image that is still mounted or in use stays; it goes next time.
                subprocess.run(["podman", "rmi", name], capture_output=True)


def image_config(image: BuiltImage) -> ImageConfig:
    inspected = run_step([image.builder, "image", "inspect", image.reference],
                         "inspecting the image")
    return ImageConfig.from_inspect(json.loads(inspected)[0]["Config"])


@contextmanager
def mounted_root(image: BuiltImage) -> Iterator[Path]:
    """The image's root filesystem as a folder: podman mounts it (read-only);
    Docker's is exported once into the cache."""
    if image.builder == "docker":
        yield _exported_root(image)
        return
    mounted = run_step(["podman", "image", "mount", image.reference], "mounting the image")
    try:
        yield Path(mounted.strip())
    finally:
        subprocess.run(["podman", "image", "unmount", image.reference], capture_output=True)


def _exported_root(image: BuiltImage) -> Path:
    roots = image_folder() / "roots"
    root, complete = roots / image.key, roots / f"{image.key}.complete"
    if complete.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    container = run_step(["docker", "create", image.reference], "creating a container").strip()
    try:
        exported = roots / f"{image.key}.tar"
        run_step(["docker", "export", "--output", str(exported), container],
                 "exporting the image's root filesystem")
        run_step(["tar", "--extract", "--file", str(exported), "--directory", str(root)],
                 "unpacking the image's root filesystem")
        exported.unlink()
    finally:
        subprocess.run(["docker", "rm", container], capture_output=True)
    complete.touch()
    return root


def _home_in_image(root: Path, uid: str) -> str:
    """HOME as container runtimes set it: the user's entry in the image's
    /etc/passwd, else /."""
    passwd = root / "etc" / "passwd"
    entries = passwd.read_text().splitlines() if passwd.exists() else []
    for fields in (entry.split(":") for entry in entries):
        if len(fields) >= 6 and fields[2] == uid:
            return fields[5]
    return "/"


def root_command(root: Path, config: ImageConfig, args: list[str], scratch: Path,
                 user: str | None = None, env: dict[str, str] | None = None,
                 entrypoint: tuple[str, ...] | None = None) -> list[str]:
    """The host command that runs the image's entry point (or ``entrypoint``) with
    ``args`` as a container would: the image's environment (plus ``env``), as its
    user (or ``user``, numeric ``uid:gid``), from ``root`` made read-only, with
    ``scratch`` at /tmp. It runs in the host's network, so it reaches loopback."""
    run_as = user or config.user
    if not all(part.isdigit() for part in run_as.split(":")):
        raise ToolchainError(f"the image's user {run_as!r} is not numeric uid:gid; chroot "
                             "would resolve a name against the host's users")
    if config.working_dir not in ("", "/"):
        raise ToolchainError(f"the image's working directory {config.working_dir!r} is not "
                             "/, where chroot starts")
    environment = list(config.env)
    if not any(entry.startswith("HOME=") for entry in environment):
        environment.append(f"HOME={_home_in_image(root, run_as.split(':')[0])}")
    environment += [f"{name}={value}" for name, value in (env or {}).items()]
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", _READ_ONLY_ROOT_SCRIPT, "sh", str(root), str(scratch),
            "env", "--ignore-environment", *environment,
            chroot, f"--userspec={run_as}", str(root),
            *(config.entrypoint if entrypoint is None else entrypoint), *args]
