"""Constants and small helpers shared by the synthetic generators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

VolumeLayout = Literal["nnunet", "images_labels"]
CHANNEL_NAMES = ("T1", "T2", "FLAIR", "T1c")
CLASS_NAMES = ("tumour", "oedema", "necrosis", "cyst")
#: HU = stored int16 value + this intercept, for ``modality="ct"`` (scl_slope 1).
CT_INTERCEPT = -1024.0
BLOCK_SIZE = 64


def write_json(path: Path, payload: dict[str, Any], indent: int | None = 1) -> None:
    path.write_text(json.dumps(payload, indent=indent) + "\n", encoding="utf-8")


# --- NIfTI volumes ------------------------------------------------------------------------------
