"""Build hook: compile the replay's C encoding kernels into the wheel (and, for an editable
install, beside their source). Needs a C compiler (`cc`, or `$CC`) at install time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

_BUILDER = Path(__file__).parent / "iceberg_lake" / "timetravel" / "_native_build.py"


class CustomBuildHook(BuildHookInterface):  # type: ignore[misc]
    """Compiles `iceberg_lake/timetravel/_canonical.c` with `_native_build.build`."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Build the library; a regular wheel carries it (platform-tagged), an editable install
        finds it beside the source."""
        spec = importlib.util.spec_from_file_location("_native_build", _BUILDER)
        assert spec is not None and spec.loader is not None
        builder = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(builder)
        try:
            library = builder.build()
        except RuntimeError as exc:
            raise RuntimeError(
                f"iceberg_lake needs a C compiler to build its replay kernels: {exc}"
            ) from None
        if version != "editable":
            relative = library.relative_to(Path(self.root)).as_posix()
            build_data["force_include"][str(library)] = relative
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
