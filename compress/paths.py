"""Where the shipped files live (compress/models/): a path and nothing else, so that every
module can name it (`atomic` refuses to write over them) without importing the loaders."""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent / "models"
