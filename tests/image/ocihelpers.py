"""Hand-made OCI layers, layouts and docker archives, hostile ones included."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from instancelib.image import sif


def entry(kind: str, name: str, content: bytes | str = b"", *, mode: int | None = None,
          uid: int = 0, gid: int = 0) -> tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]:
    """A tar entry: kind file|dir|symlink|hardlink|fifo (``content``: data or link target)."""
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid = 1_600_000_000, uid, gid
    if kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755 if mode is None else mode
    elif kind == "symlink":
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, str(content), 0o777
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, str(content)
        info.mode = 0o644 if mode is None else mode
    elif kind == "fifo":
        info.type, info.mode = tarfile.FIFOTYPE, 0o644 if mode is None else mode
    else:
        data = content if isinstance(content, bytes) else content.encode()
        info.size = len(data)
        info.mode = (0o640 if name.endswith("secret") else 0o644) if mode is None else mode
        return info, data
    return info


def layer_tar(entries: list[Any], *, compress: bool = True) -> bytes:
    """A layer from ``(kind, name, content)`` tuples or ``entry()`` results, gzipped."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in entries:
            made = entry(*item) if isinstance(item, tuple) and isinstance(item[0], str) else item
            if isinstance(made, tuple):
                tar.addfile(made[0], io.BytesIO(made[1]))
            else:
                tar.addfile(made)
    return gzip.compress(buffer.getvalue(), mtime=0) if compress else buffer.getvalue()


def blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def make_layout(layout: Path, layers: list[bytes], config: dict[str, Any] | None = None) -> Path:
    """An OCI image layout directory holding ``layers`` (digests all correct)."""
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    config_blob = json.dumps({"architecture": sif.host_arch(), "os": "linux",
                              "config": config or {}, "rootfs": {"type": "layers"}}).encode()
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": blob(layout, config_blob), "size": len(config_blob)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": blob(layout, layer), "size": len(layer)} for layer in layers],
    }
    manifest_blob = json.dumps(manifest).encode()
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": blob(layout, manifest_blob), "size": len(manifest_blob)}]}))
    return layout


def make_docker_archive(path: Path, layers: list[bytes],
                        config: dict[str, Any] | None = None) -> Path:
    """A ``docker save`` archive of uncompressed ``layers`` (diff_ids all correct)."""
    diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    config_blob = json.dumps({"architecture": sif.host_arch(), "os": "linux",
                              "config": config or {},
                              "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_name = f"{hashlib.sha256(config_blob).hexdigest()}.json"
    names = [f"{d.partition(':')[2]}.tar" for d in diff_ids]
    files = {config_name: config_blob, **dict(zip(names, layers, strict=True)),
             "manifest.json": json.dumps([{"Config": config_name, "RepoTags": ["x:1"],
                                           "Layers": names}]).encode()}
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def replace_in_archive(path: Path, name: str, data: bytes) -> None:
    """Rewrite one member of a tar archive (to tamper with it)."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
                   for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for member, content in members:
            written = data if member.name == name else content
            if member.name == name:
                member.size = len(data)
            tar.addfile(member, io.BytesIO(written) if written is not None else None)
