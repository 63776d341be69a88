"""Where the BPF source and the compiled object live (the object is gitignored)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE = PACKAGE_DIR / "bpf" / "ipip.c"
DEFAULT_OBJECT = PACKAGE_DIR / "bpf" / "ipip.o"
ENV_OBJECT = "TABBY_IPIP_BPF_OBJECT"


def object_path() -> Path:
    """The object the loader uses: $TABBY_IPIP_BPF_OBJECT, else bpf/ipip.o."""
    env = os.environ.get(ENV_OBJECT)
    return Path(env) if env else DEFAULT_OBJECT
