#!/usr/bin/env bash
# Lays out an installable tree of xdplb in DIST (as a package would put it under /):
# binaries (lbd, lbctl, and xdplb-backend-setup, which `lbctl backend-setup` runs from lbctl's
# directory), the systemd unit, /etc/xdplb/lbd.toml, man pages and shell completions generated
# from lbctl's clap definitions, and a tarball of it all.
#   packaging/dist.sh BIN_DIR DIST      (make dist: BIN_DIR=target/release, DIST=dist)
set -euo pipefail

bin_dir=${1:?usage: dist.sh BIN_DIR DIST}
dist=${2:?usage: dist.sh BIN_DIR DIST}
here=$(cd "$(dirname "$0")" && pwd)

for b in lbd lbctl xdplb-backend-setup; do
	[ -x "$bin_dir/$b" ] || { echo "dist.sh: $bin_dir/$b not built" >&2; exit 1; }
done

root="$dist/root"
rm -rf "$root"
install -d "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/etc/xdplb" \
	"$root/usr/share/man/man1" "$root/usr/share/man/man8" "$root/usr/share/bash-completion/completions" \
	"$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d" \
	"$root/usr/share/doc/xdplb" "$root/etc/iproute2/rt_protos.d"

install -m 0755 "$bin_dir/lbd" "$bin_dir/lbctl" "$bin_dir/xdplb-backend-setup" "$root/usr/bin/"
install -m 0644 "$here/lbd.service" "$root/usr/lib/systemd/system/lbd.service"
install -m 0644 "$here/lbd.toml" "$root/etc/xdplb/lbd.toml"
install -m 0644 "$here/../examples/lbd.toml" "$root/usr/share/doc/xdplb/lbd.toml.example"
# `ip route` names lbd's route protocol (routes::ROUTE_PROTOCOL in src/routes.rs).
printf '200\txdplb\n' >"$root/etc/iproute2/rt_protos.d/xdplb.conf"

lbctl="$root/usr/bin/lbctl"
"$lbctl" man --dir "$root/usr/share/man/man1" >/dev/null
"$root/usr/bin/lbd" --man >"$root/usr/share/man/man8/lbd.8"
gzip -9n "$root"/usr/share/man/man1/*.1 "$root"/usr/share/man/man8/lbd.8
"$lbctl" completions bash >"$root/usr/share/bash-completion/completions/lbctl"
"$lbctl" completions zsh >"$root/usr/share/zsh/vendor-completions/_lbctl"
"$lbctl" completions fish >"$root/usr/share/fish/vendor_completions.d/lbctl.fish"

version=$("$lbctl" --version | awk '{print $2}')
tarball="$dist/xdplb-$version-$(uname -m).tar.gz"
tar -C "$root" --owner=0 --group=0 -czf "$tarball" .
echo "dist: $root ($(find "$root" -type f | wc -l) files), $tarball"
