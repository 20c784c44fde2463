#!/usr/bin/env bash
# Line coverage of the whole test suite as HTML: target/coverage/html/index.html
# Installs cargo-llvm-cov and an LLVM that reads this Rust's profiles if missing.
set -euo pipefail
cd "$(dirname "$0")"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! command -v cargo-llvm-cov >/dev/null 2>&1; then
    cargo install --locked cargo-llvm-cov
fi
if [ ! -x /usr/lib/llvm-19/bin/llvm-cov ]; then
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq llvm-19 >/dev/null
fi
export LLVM_COV=/usr/lib/llvm-19/bin/llvm-cov
export LLVM_PROFDATA=/usr/lib/llvm-19/bin/llvm-profdata

bash .ci/install-deps
cargo llvm-cov --html --output-dir target/coverage
cargo llvm-cov report --summary-only
echo "report: target/coverage/html/index.html"
if [ -z "${CI:-}" ] && command -v xdg-open >/dev/null 2>&1; then
    xdg-open target/coverage/html/index.html || true
fi
