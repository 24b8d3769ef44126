#!/usr/bin/env bash
# A fully static `lmx` for x86_64 Linux (musl libc): one file that runs on any distribution,
# with nothing to install (copy it onto a CI machine, or a container FROM scratch).
#
# Usage: scripts/build-static.sh [EXTRA CARGO ARGS...]     e.g. --features etcd
# Needs: the Rust target (`rustup target add x86_64-unknown-linux-musl`, done here if rustup is
# there) and Debian's `musl-tools` (musl-gcc, for any C a dependency compiles).
# Prints the binary's path; also writes target/dist/lmx-x86_64-unknown-linux-musl.tgz, holding
# lmx-x86_64-unknown-linux-musl/lmx (the layout `cargo binstall` looks for in a release).
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl

if command -v rustup >/dev/null 2>&1; then
  rustup target add "$target" >/dev/null
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
  echo "build-static.sh: musl-gcc not found (Debian/Ubuntu: apt-get install musl-tools)" >&2
  exit 1
fi

# musl targets link statically by default (crt-static); say so anyway, and compile any C with
# musl's own headers and libc rather than glibc's.
CC_x86_64_unknown_linux_musl=musl-gcc \
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" --bin lmx "$@" >&2

bin=${CARGO_TARGET_DIR:-target}/$target/release/lmx
# Refuse to hand out something that is not static after all: no program interpreter (the
# dynamic loader) and no shared library needed.
if readelf -lW "$bin" | grep -q 'INTERP' || readelf -dW "$bin" | grep -q '(NEEDED)'; then
  echo "build-static.sh: $bin is not statically linked:" >&2
  readelf -dW "$bin" | grep '(NEEDED)' >&2 || true
  exit 1
fi

dist=${CARGO_TARGET_DIR:-target}/dist
stage=$dist/lmx-$target
rm -rf "$stage"
mkdir -p "$stage"
cp "$bin" README.md LICENSE-MIT LICENSE-APACHE "$stage/"
tar -C "$dist" -czf "$dist/lmx-$target.tgz" "lmx-$target"
echo "build-static.sh: $bin: $(stat -c %s "$bin") bytes, static; $dist/lmx-$target.tgz" >&2
echo "$bin"
