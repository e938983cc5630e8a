"""iceberg_lake: a market-data lakehouse on Apache Iceberg.

JetStream market data in, Bronze/Silver/Gold Iceberg tables out, snapshot-pinned and replayable.
"""

from iceberg_lake.config import Settings, load_settings
from iceberg_lake.exceptions import LakeError

__version__ = "0.2.0"

__all__ = ["LakeError", "Settings", "__version__", "load_settings"]
