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
