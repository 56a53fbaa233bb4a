"""The image build's cache key and the command that runs the image from its root
filesystem (:mod:`hybrid_compute.dev.image`), without building anything."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from hybrid_compute.dev import image
from hybrid_compute.dev.image import ImageConfig
from hybrid_compute.dev.toolchain import ToolchainError

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ImageConfig(user="65532:65532", entrypoint=("hybrid-compute",), cmd=("run",),
                     env=("PATH=/opt/hybrid-compute/bin:/usr/bin",), working_dir="")


def test_the_key_covers_every_source_the_dockerfile_copies() -> None:
    context = image.context_files(ROOT)
    sources = []
    for line in re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text()).splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not words[1].startswith("--from="):
            sources += words[1:-1]
    assert sources, "the Dockerfile copies nothing from the build context?"
    for source in sources:
        assert any(path == Path(source) or Path(source) in path.parents for path in context), (
            f"COPY {source} reads files the image's cache key does not hash")
    assert not [p for p in context if "__pycache__" in p.parts or p.suffix == ".pyc"]


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, tmp_path / name)
    (tmp_path / "operator" / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "operator" / "pkg" / "code.py").write_text("A = 1\n")
    (tmp_path / "operator" / "pkg" / "__pycache__" / "code.pyc").write_bytes(b"\0")
    (tmp_path / "charts").mkdir()
    (tmp_path / "charts" / "values.yaml").write_text("a: 1\n")
    return tmp_path


def test_the_key_follows_what_the_build_reads_and_nothing_else(checkout: Path) -> None:
    def key() -> str:
        return image.image_key(checkout, "podman", "localhost/base:1")

    first = key()
    (checkout / "charts" / "values.yaml").write_text("a: 2\n")
    (checkout / "operator" / "pkg" / "__pycache__" / "code.pyc").write_bytes(b"\1")
    assert key() == first
    assert image.image_key(checkout, "podman", "localhost/base:2") != first
    assert image.image_key(checkout, "docker", "localhost/base:1") != first
    (checkout / "operator" / "pkg" / "code.py").write_text("A = 2\n")
    changed = key()
    assert changed != first
    with (checkout / "Dockerfile").open("a") as dockerfile:
        dockerfile.write("# a comment\n")
    assert key() != changed


def test_a_dockerignore_the_key_cannot_follow_is_refused(checkout: Path) -> None:
    (checkout / ".dockerignore").write_text("*\n!operator\noperator/secret.txt\n")
    with pytest.raises(ToolchainError, match=r"operator/secret\.txt"):
        image.context_files(checkout)


def test_the_command_runs_the_entry_point_as_the_images_user(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    command = image.root_command(tmp_path, CONFIG, ["--help"], tmp_path / "scratch",
                                 env={"TOKEN": "t"})
    assert command[:4] == ["unshare", "--mount", "--propagation", "private"]
    assert command[-4:] == ["--userspec=65532:65532", str(tmp_path), "hybrid-compute", "--help"]
    assert "HOME=/" in command and "TOKEN=t" in command
    as_root = image.root_command(tmp_path, CONFIG, ["-V"], tmp_path, user="0:0",
                                 entrypoint=("python3",))
    assert "HOME=/root" in as_root
    assert as_root[-4:] == ["--userspec=0:0", str(tmp_path), "python3", "-V"]


def test_a_user_name_is_refused_as_chroot_would_resolve_it_on_the_host(
        tmp_path: Path) -> None:
    named = ImageConfig(user="nonroot", entrypoint=("x",), cmd=(), env=(), working_dir="")
    with pytest.raises(ToolchainError, match="numeric"):
        image.root_command(tmp_path, named, [], tmp_path)
