#!/usr/bin/env bash
# Install the JDBC drivers Spark needs to open the lake's catalog, from Debian's packages:
# SQLite (xerial, with its JNI library) and PostgreSQL. Skips what is already installed.
# As root: apt-get install. Otherwise: apt-get download + dpkg -x into a cache directory, and
# print `export ICEBERG_LAKE_SPARK_DEBS=DIR` for iceberg_lake/testing_spark.py to find them.
set -euo pipefail

packages=(libxerial-sqlite-jdbc-java libxerial-sqlite-jdbc-jni libpostgresql-jdbc-java)
missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "install_spark_jdbc: no apt-get; install ${missing[*]} (or their jars) by hand" >&2
  exit 1
fi

if [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/iceberg_lake/debs"
  mkdir -p "$cache/root"
  (cd "$cache" && apt-get download "${missing[@]}" >/dev/null)
  for deb in "$cache"/*.deb; do dpkg -x "$deb" "$cache/root"; done
  echo "export ICEBERG_LAKE_SPARK_DEBS=$cache/root"
fi
