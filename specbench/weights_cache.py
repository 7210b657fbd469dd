"""The converted-weights cache: a GGUF file converted once into our own state dict, loaded directly.

Converting a GGUF through transformers (metadata parsed several times, every tensor dequantised
in numpy) takes ~20 s for the default model on 2 CPU cores; reading the converted float32
safetensors takes a fraction of a second.

Where: `$SPECBENCH_CACHE`, else `$XDG_CACHE_HOME/specbench`, else `~/.cache/specbench`; each
model in `models/<key>/`: `model.safetensors` (our parameter names, float32; a tied LM head is
left out), `args.json` (ModelArgs), the tokenizer's files and `entry.json` (written last: the
source file and every file's size and CRC-32).

The key is a SHA-256 over the format version, the file's size, its first and last MiB and 16
blocks of 64 KiB spread evenly over it: about 3 MiB read, a few milliseconds at any file size
(hashing all of a 5 GB file would take seconds on every load). It depends on the content only,
not the path or mtime, so a copy or a reinstall of the same file shares the entry, while another
file (other metadata or header, other size, other data in any sampled block) gets its own. An
edit confined to unsampled bytes would be missed; model files are replaced, not patched in place
(delete `models/<key>/` to force a rebuild).

An entry is trusted only when entry.json parses, every listed file has its recorded size and
CRC-32 and the safetensors file parses; otherwise it is deleted and rebuilt from the GGUF. Entries
are built in a temporary folder and renamed into place, so an interrupted build leaves none.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import torch

from .errors import SpecbenchError

FORMAT = 1                      # bump when the layout or the conversion changes
ENTRY_FILE = "entry.json"
WEIGHTS_FILE = "model.safetensors"
ARGS_FILE = "args.json"
_EDGE, _BLOCK, _BLOCKS = 1 << 20, 1 << 16, 16
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


class DamagedEntry(Exception):
    """A cache entry that fails its checks (the caller rebuilds it)."""


def cache_root() -> Path:
    env = os.environ.get("SPECBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "specbench"


def fingerprint(path: Path) -> str:
    """The entry key of a model file (see the module docstring for what it covers)."""
    size = path.stat().st_size
    h = hashlib.sha256(f"specbench-weights-v{FORMAT}:{size}:".encode())
    with open(path, "rb") as f:
        spots = [0, max(0, size - _EDGE)] + [i * size // _BLOCKS for i in range(1, _BLOCKS)]
        for i, offset in enumerate(spots):
            f.seek(offset)
            h.update(f.read(_EDGE if i < 2 else _BLOCK))
    return h.hexdigest()[:32]


def entry_dir(path: Path) -> Path:
    return cache_root() / "models" / fingerprint(path)


def _crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def _record(entry: Path) -> dict:
    try:
        record = json.loads((entry / ENTRY_FILE).read_text())
    except (OSError, ValueError) as e:
        raise DamagedEntry(f"{entry / ENTRY_FILE}: {type(e).__name__}") from None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or record.get("format") != FORMAT or WEIGHTS_FILE not in files \
            or ARGS_FILE not in files or not all(isinstance(v, list) and len(v) == 2 and
                                                 all(isinstance(x, int) for x in v) for v in files.values()):
        raise DamagedEntry(f"{entry / ENTRY_FILE}: not a format-{FORMAT} entry")
    return record


def check_entry(entry: Path) -> dict:
    """The entry's record, after checking every file but the weights in full (sizes for all):
    cheap enough for every load; `read_weights` checks the weights' CRC as it reads them."""
    record = _record(entry)
    for name, (size, crc) in record["files"].items():
        f = entry / name
        if not f.is_file() or f.stat().st_size != size:
            raise DamagedEntry(f"{f}: missing or of the wrong size")
        if name != WEIGHTS_FILE and _crc(f) != crc:
            raise DamagedEntry(f"{f}: checksum mismatch")
    return record


def read_weights(entry: Path) -> dict[str, torch.Tensor]:
    """Our state dict from an entry: the file is read once into one buffer (which the tensors view,
    so nothing later done to the file reaches them), checked against its recorded size and CRC-32,
    and its safetensors header parsed here. Three times faster than safetensors' own loader plus
    a copy out of its memory map (0.4 vs 1.3 CPU s for the default model)."""
    size, crc = _record(entry)["files"][WEIGHTS_FILE]
    f = entry / WEIGHTS_FILE
    try:
        if f.stat().st_size != size:
            raise DamagedEntry(f"{f}: size mismatch")
        data = torch.empty(size, dtype=torch.uint8)
        with open(f, "rb") as fh:
            if fh.readinto(memoryview(data.numpy())) != size:
                raise DamagedEntry(f"{f}: short read")
    except OSError as e:
        raise DamagedEntry(f"{f}: {e.strerror}") from None
    raw = data.numpy()
    if zlib.crc32(raw) != crc:
        raise DamagedEntry(f"{f}: checksum mismatch")
    try:
        n = int.from_bytes(raw[:8].tobytes(), "little")
        header = json.loads(raw[8:8 + n].tobytes())
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = (8 + n + o for o in info["data_offsets"])
            out[name] = data[start:end].view(_DTYPES[info["dtype"]]).view(info["shape"])
        return out
    except (ValueError, KeyError, TypeError, RuntimeError) as e:    # a header that does not fit its data
        raise DamagedEntry(f"{f}: {type(e).__name__}") from None


def write_entry(entry: Path, source: Path, state: dict[str, torch.Tensor], args_json: dict, tokenizer) -> None:
    """Build an entry in a temporary folder beside it and rename it into place (atomic)."""
    from safetensors.torch import save_file
    root = entry.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=root))
    except OSError as e:
        raise SpecbenchError(f"cannot write the weights cache in {root} ({e.strerror}): "
                             "set SPECBENCH_CACHE to a writable folder") from None
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_FILE))
        (tmp / ARGS_FILE).write_text(json.dumps(args_json, indent=1))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        files = {p.name: [p.stat().st_size, _crc(p)] for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / ENTRY_FILE).write_text(json.dumps({"format": FORMAT, "source": str(source), "files": files}, indent=1))
        try:
            os.rename(tmp, entry)
        except OSError:
            if not entry.is_dir():       # another process renamed its copy first: keep that one
                raise
    except OSError as e:
        raise SpecbenchError(f"cannot write the weights cache entry {entry} ({e.strerror}): "
                             "set SPECBENCH_CACHE to a writable folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_entry(entry: Path) -> None:
    if not entry.exists():
        return
    try:
        shutil.rmtree(entry)
    except OSError as e:
        raise SpecbenchError(f"cannot remove the damaged weights cache entry {entry} ({e.strerror}): "
                             "delete it by hand") from None
