#!/usr/bin/env bash
# Builds the Debian packages prom-daemon and prom-bridge (amd64 on this host, arm64
# cross-built with Debian's gcc-aarch64-linux-gnu) and a signed apt repository of them.
# docs/PACKAGING.md explains the result.
#
#   scripts/package.sh              build the four .debs, run lintian, write target/apt-repo/
#   PROM_PACKAGE_ARCHES=amd64 ...   only these architectures (amd64, arm64)
#   PROM_PACKAGE_LINTIAN=0 ...      skip lintian
#
# Steps: (1) tools: cargo-deb, apt-ftparchive, lintian, gpg, installed when missing;
# (2) prom-gendoc (gendoc/) writes the man pages and completions into
# target/gendoc/<package>/; (3) per architecture and package, packaging/gen-copyright.py
# writes the DEP-5 copyright from `cargo metadata --filter-platform`, and cargo-deb builds
# the release binaries and the package into target/debian/; (4) lintian: no errors and no warnings
# beyond packaging/lintian-overrides; (5) apt-ftparchive indexes target/apt-repo/ (pool/
# and dists/bookworm/), signed with the repository key (InRelease, Release.gpg), whose
# public half is target/apt-repo/prom-archive-keyring.gpg.
#
# The signing key: PROM_APT_GNUPGHOME (a GnuPG home) and PROM_APT_KEY_ID (a key in it)
# when both are set; otherwise a key this script generates once (ed25519, no passphrase)
# in target/apt-gnupg/, kept between runs so the repository's key stays the same.
#
# Re-runs are quick: cargo rebuilds only what changed; the .debs and indexes are rewritten.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
log() { echo "package: $*" >&2; }
die() { log "$*"; exit 1; }

target_dir=${CARGO_TARGET_DIR:-$root/target}
[ "$target_dir" = "$root/target" ] \
  || die "CARGO_TARGET_DIR must be unset or $root/target (cargo-deb's assets name target/)"
suite=bookworm
component=main
read -r -a arches <<<"${PROM_PACKAGE_ARCHES:-amd64 arm64}"

rust_triple() {
  case "$1" in
    amd64) echo x86_64-unknown-linux-gnu ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
    *) die "unknown architecture $1 (amd64, arm64)" ;;
  esac
}

# ---- (1) tools ---------------------------------------------------------------------------
apt_install() {
  local as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  log "apt-get install $*"
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o Dpkg::Use-Pty=0 \
    install --no-install-recommends "$@" >/dev/null \
    || { "${as_root[@]}" apt-get -qq update && "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get -y -qq -o Dpkg::Use-Pty=0 install --no-install-recommends "$@" >/dev/null; }
}
need=()
command -v apt-ftparchive >/dev/null || need+=(apt-utils)
command -v gpg >/dev/null || need+=(gnupg)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
[ "${PROM_PACKAGE_LINTIAN:-1}" = 0 ] || command -v lintian >/dev/null || need+=(lintian)
if [[ " ${arches[*]} " == *" arm64 "* ]]; then
  command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  command -v aarch64-linux-gnu-strip >/dev/null || need+=(binutils-aarch64-linux-gnu)
  if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    rustup target add aarch64-unknown-linux-gnu
  fi
fi
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
if ! command -v cargo-deb >/dev/null; then
  log "cargo install --locked cargo-deb"
  cargo install --locked cargo-deb
fi

version=$(cargo metadata --format-version 1 --no-deps --locked \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="prom-daemon"))')
# The Debian revision comes from the top entry of packaging/changelog, so the package's
# version and its changelog always agree.
deb_version=$(sed -n '1s/^prom-daemon (\([^)]*\)).*/\1/p' packaging/changelog)
revision=${deb_version##*-}
[ "$deb_version" = "$version-$revision" ] \
  || die "packaging/changelog's top entry is $deb_version; the crate version is $version: add an entry for $version-1"

# ---- (2) man pages and completions -------------------------------------------------------
gendoc="$target_dir/gendoc"
log "prom-gendoc -> $gendoc"
# The dev profile: a doc generator needs no optimisation, and it shares artifacts with
# the test builds.
cargo build --locked -q -p prom-gendoc
rm -rf "$gendoc.new"
"$target_dir/debug/prom-gendoc" "$gendoc.new"
rm -rf "$gendoc"
mv "$gendoc.new" "$gendoc"

# ---- (3) packages ------------------------------------------------------------------------
mkdir -p "$target_dir/debian"
debs=()
packages=(prom-daemon prom-bridge)
for arch in "${arches[@]}"; do
  triple=$(rust_triple "$arch")
  cargo metadata --format-version 1 --locked --filter-platform "$triple" >"$gendoc/metadata-$arch.json"
  for package in "${packages[@]}"; do
    python3 packaging/gen-copyright.py "$gendoc/metadata-$arch.json" "$triple" "$package" \
      >"$gendoc/$package/copyright"
    deb="$target_dir/debian/${package}_${version}-${revision}_${arch}.deb"
    args=(deb --locked -p "$package" --deb-revision "$revision" --strip --output "$deb")
    env=()
    if [ "$arch" != amd64 ]; then
      args+=(--target "$triple")
      # Debian's cross binutils strip the cross-built binaries (cargo-deb's STRIP_<triple>).
      env=("STRIP_$triple=aarch64-linux-gnu-strip" "OBJCOPY_$triple=aarch64-linux-gnu-objcopy")
    fi
    log "cargo ${args[*]}"
    env "${env[@]}" cargo "${args[@]}" >&2
    cp "$gendoc/$package/copyright" "$gendoc/$package/copyright-$arch"
    debs+=("$deb")
  done
done

# ---- (4) lintian -------------------------------------------------------------------------
if [ "${PROM_PACKAGE_LINTIAN:-1}" != 0 ]; then
  for deb in "${debs[@]}"; do
    log "lintian $(basename "$deb")"
    # --fail-on error,warning: any tag of those levels not overridden fails the build.
    lintian --info --fail-on error,warning "$deb" >&2 || die "lintian: $(basename "$deb") is not clean"
  done
fi

# ---- (5) signed apt repository -----------------------------------------------------------
repo="$target_dir/apt-repo"
if [ -n "${PROM_APT_GNUPGHOME-}" ] || [ -n "${PROM_APT_KEY_ID-}" ]; then
  [ -n "${PROM_APT_GNUPGHOME-}" ] && [ -n "${PROM_APT_KEY_ID-}" ] \
    || die "set both PROM_APT_GNUPGHOME and PROM_APT_KEY_ID, or neither"
  gnupghome=$PROM_APT_GNUPGHOME
  key=$PROM_APT_KEY_ID
else
  gnupghome="$target_dir/apt-gnupg"
  mkdir -p "$gnupghome"
  chmod 700 "$gnupghome"
  if ! GNUPGHOME=$gnupghome gpg --batch --list-secret-keys --with-colons 2>/dev/null | grep -q '^sec'; then
    log "generating the repository key in $gnupghome"
    GNUPGHOME=$gnupghome gpg --batch --quiet --passphrase '' --quick-generate-key \
      "prom-daemon apt repository (local build) <prom-daemon@example.invalid>" ed25519 sign never
  fi
  key=$(GNUPGHOME=$gnupghome gpg --batch --list-secret-keys --with-colons | awk -F: '/^fpr/ {print $10; exit}')
fi
gpg_repo() { GNUPGHOME=$gnupghome gpg --batch --quiet --yes "$@"; }

log "apt repository -> $repo (key $key)"
rm -rf "$repo"
pool="$repo/pool/$component/p/prom-daemon"
mkdir -p "$pool"
cp "${debs[@]}" "$pool/"
(
  cd "$repo"
  for arch in "${arches[@]}"; do
    dir="dists/$suite/$component/binary-$arch"
    mkdir -p "$dir"
    apt-ftparchive --arch "$arch" packages "pool/$component" >"$dir/Packages"
    gzip -9n <"$dir/Packages" >"$dir/Packages.gz"
  done
  apt-ftparchive \
    -o APT::FTPArchive::Release::Origin=prom-daemon \
    -o APT::FTPArchive::Release::Label=prom-daemon \
    -o APT::FTPArchive::Release::Suite=$suite \
    -o APT::FTPArchive::Release::Codename=$suite \
    -o "APT::FTPArchive::Release::Architectures=${arches[*]}" \
    -o APT::FTPArchive::Release::Components=$component \
    -o "APT::FTPArchive::Release::Description=prom-daemon packages" \
    release "dists/$suite" >"dists/$suite/Release.new"
  mv "dists/$suite/Release.new" "dists/$suite/Release"
)
gpg_repo --local-user "$key" --clearsign -o "$repo/dists/$suite/InRelease" "$repo/dists/$suite/Release"
gpg_repo --local-user "$key" --armor --detach-sign -o "$repo/dists/$suite/Release.gpg" "$repo/dists/$suite/Release"
# Binary (not armored) keyring: what apt's signed-by expects in a .gpg file.
gpg_repo --export "$key" >"$repo/prom-archive-keyring.gpg"
# Check the signatures against the exported keyring, as apt will.
gpgv --keyring "$repo/prom-archive-keyring.gpg" "$repo/dists/$suite/InRelease" 2>/dev/null \
  || die "InRelease does not verify with prom-archive-keyring.gpg"
gpgv --keyring "$repo/prom-archive-keyring.gpg" "$repo/dists/$suite/Release.gpg" \
  "$repo/dists/$suite/Release" 2>/dev/null || die "Release.gpg does not verify"

for deb in "${debs[@]}"; do
  echo "$deb ($(du -k "$deb" | cut -f1) KiB)"
done
echo "$repo (deb [signed-by=/usr/share/keyrings/prom-archive-keyring.gpg] file:$repo $suite $component)"
