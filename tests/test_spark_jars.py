"""The relocated-Jackson jar Iceberg's offline Spark runtime needs (no JVM started here).

tests/test_spark.py proves the jar works in a real Spark; this checks the relocation itself.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

from iceberg_lake.engine.spark import JACKSON_FROM, JACKSON_TO, jackson_patch_jar, relocate_class


def _utf8_constants(data: bytes) -> list[bytes]:
    sizes = {3: 4, 4: 4, 5: 8, 6: 8, 7: 2, 8: 2, 9: 4, 10: 4, 11: 4, 12: 4, 15: 3, 16: 2}
    sizes.update({17: 4, 18: 4, 19: 2, 20: 2})
    count, pos, index, out = struct.unpack_from(">H", data, 8)[0], 10, 1, []
    while index < count:
        tag = data[pos]
        if tag == 1:
            length = struct.unpack_from(">H", data, pos + 1)[0]
            out.append(data[pos + 3 : pos + 3 + length])
            pos += 3 + length
        else:
            pos += 1 + sizes[tag]
            index += tag in (5, 6)
        index += 1
    return out


def test_patch_jar_holds_relocated_jackson_and_is_built_once(tmp_path: Path) -> None:
    jar = jackson_patch_jar(tmp_path)
    built = jar.stat().st_mtime_ns
    assert jackson_patch_jar(tmp_path) == jar and jar.stat().st_mtime_ns == built
    with zipfile.ZipFile(jar) as z:
        names = z.namelist()
        builder = z.read(JACKSON_TO + "core/JsonFactoryBuilder.class")
        service = z.read(
            "META-INF/services/org.apache.iceberg.shaded.com.fasterxml.jackson.core.JsonFactory"
        )
    classes = [n for n in names if n.endswith(".class")]
    assert len(classes) > 500 and all(n.startswith(JACKSON_TO) for n in classes)
    assert JACKSON_TO + "databind/ObjectMapper.class" in names
    assert JACKSON_TO + "annotation/JsonProperty.class" in names
    assert service.strip() == b"org.apache.iceberg.shaded.com.fasterxml.jackson.core.JsonFactory"
    constants = _utf8_constants(builder)
    assert any(JACKSON_TO.encode() in c for c in constants)
    # No reference to the original package is left (only ones inside the new prefix).
    for c in constants:
        assert JACKSON_FROM.encode() not in c.replace(JACKSON_TO.encode(), b"")


def test_relocate_class_keeps_the_rest_of_the_class_file(tmp_path: Path) -> None:
    jar = jackson_patch_jar(tmp_path)
    with zipfile.ZipFile(jar) as z:
        data = z.read(JACKSON_TO + "core/JsonFactoryBuilder.class")
    # Relocating a relocated class again (other prefix) is a pure constant-pool rewrite: the
    # bytes after the constant pool are unchanged, and undoing it restores the input exactly.
    pairs = [(JACKSON_TO.encode(), b"x/")]
    moved = relocate_class(data, pairs)
    assert relocate_class(moved, [(b"x/", JACKSON_TO.encode())]) == data
    assert len(_utf8_constants(moved)) == len(_utf8_constants(data))
