"""iceberg_lake: a market-data lakehouse on Apache Iceberg.

JetStream market data in, Bronze/Silver/Gold Iceberg tables out, snapshot-pinned and replayable.

The package itself imports nothing: the `lake` console script starts here, and a Ctrl-C before
the CLI's own handler is in place would be a Python traceback (`iceberg_lake.cli.main`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iceberg_lake.config import Settings, load_settings
    from iceberg_lake.exceptions import LakeError

__version__ = "0.2.0"

__all__ = ["LakeError", "Settings", "__version__", "load_settings"]


def __getattr__(name: str) -> Any:
    if name in ("Settings", "load_settings"):
        from iceberg_lake import config

        return getattr(config, name)
    if name == "LakeError":
        from iceberg_lake.exceptions import LakeError

        return LakeError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
