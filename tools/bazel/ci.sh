#!/usr/bin/env bash
# CI check of the Bazel workspace (see WORKSPACE): installs Debian's bazel-bootstrap 4.2.3 if it is
# missing, builds every target, runs two quick test targets and one tool through `bazel run`, and
# stops the Bazel server. Needs the virtual environment `make test` creates (.venv); takes about
# 40 s on two cores after the install (the full suite stays with `make test`).
set -euo pipefail
cd "$(dirname "$0")/../.."

# Debian's binary, by path: a bazelisk `bazel` on PATH would download a Bazel this workspace does
# not support (WORKSPACE-based, 4.2.3's native py rules).
BAZEL_BIN=${BAZEL_BIN:-/usr/bin/bazel-4}
if [[ ! -x $BAZEL_BIN ]]; then
  sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bazel-bootstrap)
  "${install[@]}" >/dev/null 2>&1 || { "${sudo[@]}" apt-get update -qq && "${install[@]}" >/dev/null; }
fi

bazel() { "$BAZEL_BIN" --nohome_rc "$@"; }
trap 'bazel shutdown' EXIT

bazel build --noshow_progress //...
bazel test --noshow_progress //tests:test_windows //tests:test_docs
docs=$(mktemp -d)
bazel run --noshow_progress //export:write_docs -- --output_dir="$docs" \
  --asset_base_url=https://example.com/archives >/dev/null
rm -rf "$docs"
echo "bazel: build, tests and bazel run OK"
