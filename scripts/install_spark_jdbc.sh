#!/usr/bin/env bash
# What Spark needs on the machine besides the Python wheels, from Debian's packages: Java 17+ and
# the JDBC drivers that open the lake's catalog, SQLite (xerial, with its JNI library) and
# PostgreSQL. Skips what is already there.
#
# As root: `apt-get update` then `apt-get install` (openjdk-17-jre-headless when `java` is missing
# or older than 17; the drivers). Otherwise Java must already be there (one line says so if not),
# and the drivers are fetched with `apt-get download` and unpacked with `dpkg -x` into a cache
# directory; when the system's package lists cannot serve them (empty or stale, as in a fresh
# container) the script keeps private lists in that cache (`apt-get update` needs no root then).
# It prints `export ICEBERG_LAKE_SPARK_DEBS=DIR` on stdout for iceberg_lake/engine/spark.py to
# find the unpacked drivers; everything else goes to stderr. Exit status 1, with one line saying
# what is missing, when it cannot provide something: callers must check it (.ci/run does).
set -euo pipefail

die() {
  echo "install_spark_jdbc: $*" >&2
  exit 1
}

# The Java pyspark launches: $JAVA_HOME/bin/java if set, else `java` on PATH. Prints its major
# version (0 when there is none; 1 for Java 8's "1.8.0").
java_major() {
  local java=java
  [ -n "${JAVA_HOME:-}" ] && java="$JAVA_HOME/bin/java"
  if ! command -v "$java" >/dev/null 2>&1; then
    echo 0
    return
  fi
  local v
  v="$("$java" -version 2>&1 | sed -n 's/.* version "\([0-9][0-9]*\).*/\1/p' | head -n 1)"
  echo "${v:-0}"
}

is_root=false
[ "$(id -u)" = 0 ] && is_root=true
have_apt=false
command -v apt-get >/dev/null 2>&1 && have_apt=true
updated=false

# As root: refresh the system's package lists once, before the first install.
root_update() {
  if ! $updated; then
    apt-get update -qq >&2 || die "apt-get update failed (are Debian's mirrors reachable?)"
    updated=true
  fi
}

root_install() {
  root_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
    die "apt-get install $* failed"
}

# ---- Java 17+ ------------------------------------------------------------------------------
if [ "$(java_major)" -lt 17 ]; then
  if $is_root && $have_apt; then
    root_install openjdk-17-jre-headless
    [ "$(java_major)" -ge 17 ] ||
      die "openjdk-17-jre-headless is installed but the java Spark would run is older than 17 (JAVA_HOME=${JAVA_HOME:-unset})"
  else
    die "Spark needs Java 17+ (java on PATH or \$JAVA_HOME/bin/java): as root, apt-get install openjdk-17-jre-headless"
  fi
fi

# ---- JDBC drivers --------------------------------------------------------------------------
packages=(libxerial-sqlite-jdbc-java libxerial-sqlite-jdbc-jni libpostgresql-jdbc-java)
missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
$have_apt || die "no apt-get: install ${missing[*]} (or unpack their jars) by hand"

if $is_root; then
  root_install "${missing[@]}"
  exit 0
fi

cache="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/iceberg_lake/debs"
mkdir -p "$cache/root" || die "cannot create $cache"
# A marker per package unpacked by an earlier run: nothing to fetch again.
todo=()
for pkg in "${missing[@]}"; do
  [ -e "$cache/unpacked-$pkg" ] || todo+=("$pkg")
done
if [ ${#todo[@]} -gt 0 ]; then
  download="$cache/download"
  rm -rf "$download"
  mkdir -p "$download"
  # First with the system's package lists; they may be empty (a container that never ran
  # `apt-get update`) or stale (a version the mirror dropped): then private lists in the cache.
  if ! (cd "$download" && apt-get download -qq "${todo[@]}") >&2 2>/dev/null; then
    echo "install_spark_jdbc: the system's package lists cannot serve ${todo[*]}; updating private lists in $cache/apt" >&2
    mkdir -p "$cache/apt/lists/partial" "$cache/apt/cache/archives/partial"
    private=(-o "Dir::State::Lists=$cache/apt/lists" -o "Dir::Cache=$cache/apt/cache")
    apt-get "${private[@]}" update -qq >&2 ||
      die "apt-get update into $cache/apt failed (are Debian's mirrors reachable?)"
    rm -f "$download"/*.deb
    (cd "$download" && apt-get "${private[@]}" download -qq "${todo[@]}") >&2 ||
      die "apt-get download ${todo[*]} failed"
  fi
  for pkg in "${todo[@]}"; do
    debs=("$download/${pkg}"_*.deb)
    [ -f "${debs[0]}" ] || die "apt-get download gave no .deb for $pkg"
    dpkg -x "${debs[0]}" "$cache/root" || die "dpkg -x ${debs[0]} failed"
    touch "$cache/unpacked-$pkg"
  done
  rm -rf "$download"
fi
printf 'export ICEBERG_LAKE_SPARK_DEBS=%q\n' "$cache/root"
