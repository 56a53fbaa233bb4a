"""The model folder as the GPU agent sees it: the header shape of a GGUF file the
operator asks about, so it can estimate a slot's VRAM without the file leaving
the node.

Only files under the model root are read (a path that climbs out of it, by
``..`` or by a symbolic link, is refused: llama-server's mount would not reach
it either). Shapes are kept per file, size and modification time, so the
operator's repeated questions cost a ``stat`` until the file changes.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

from hybrid_compute.plan.vram import GgufError, ModelShape, read_shape
from hybrid_compute.render.children import DEFAULT_HOST_PATH


class ModelFileRefused(Exception):
    """The agent will not, or cannot, give this file's shape; ``status`` is the HTTP
    status that says which (400 outside the root, 404 missing, 422 not GGUF)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def shape_to_json(shape: ModelShape) -> dict[str, Any]:
    return dataclasses.asdict(shape)


class ModelHeaders:
    """Reads GGUF headers under ``root``, the node folder ``host_path`` mounted in
    the agent's container."""

    def __init__(self, root: Path, host_path: str = DEFAULT_HOST_PATH) -> None:
        self.root = root
        self.host_path = host_path.rstrip("/") or "/"
        self._cache: dict[Path, tuple[int, int, ModelShape | str]] = {}
        self._lock = threading.Lock()

    def resolve(self, path: str, host_path: str | None = None) -> Path:
        """The file ``path`` (relative to the model folder) names in this container."""
        if host_path is not None and (host_path.rstrip("/") or "/") != self.host_path:
            raise ModelFileRefused(404, f"this agent reads the node folder {self.host_path}, "
                                        f"not {host_path}")
        if not path or "\x00" in path:
            raise ModelFileRefused(400, "name a model file under the model folder")
        root = self.root.resolve()
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root) or target == root:
            raise ModelFileRefused(400, f"{path} is outside the model folder {self.host_path}")
        return target

    def shape(self, path: str, host_path: str | None = None) -> ModelShape:
        target = self.resolve(path, host_path)
        try:
            stat = target.stat()
        except FileNotFoundError:
            raise ModelFileRefused(404, f"{path} does not exist in {self.host_path}") from None
        except OSError as error:
            raise ModelFileRefused(404, f"{path} cannot be read: {error.strerror}") from None
        if not target.is_file():
            raise ModelFileRefused(400, f"{path} is not a file")
        with self._lock:
            cached = self._cache.get(target)
        if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            found = cached[2]
        else:
            try:
                found = read_shape(target)
            except GgufError as error:
                # The reader names the container's path; the user knows the node's.
                found = str(error).replace(str(target), path)
            except OSError as error:
                raise ModelFileRefused(404, f"{path} cannot be read: {error.strerror}") from None
            with self._lock:
                self._cache[target] = (stat.st_size, stat.st_mtime_ns, found)
        if isinstance(found, str):
            raise ModelFileRefused(422, found)
        return found
