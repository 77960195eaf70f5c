#!/usr/bin/env bash
# Build a real kube-apiserver (1.20) offline from Debian's `kubernetes` source package, for tests.
#
#   build/kube-apiserver.sh            -> prints the path of the cached binary (builds if missing)
#
# The binary is cached under $KUBE_CACHE (default ~/.cache/foundry-appliance/kube/<debian-version>/)
# keyed by the Debian source version, so a machine builds it once (~6 min on 2 cores); a warm Go
# cache makes a rebuild ~15 s. See ../shared/notes/kube-apiserver.md for why each fix is needed.
# Never commit the binary.
set -euo pipefail

KUBE_CACHE=${KUBE_CACHE:-$HOME/.cache/foundry-appliance/kube}
WORK=$KUBE_CACHE/work
mkdir -p "$WORK"

log() { echo "kube-apiserver.sh: $*" >&2; }

need_pkgs=(golang-go etcd-server dpkg-dev golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "missing packages; run: apt-get install -y ${missing[*]}"
    exit 1
  fi
fi

# A private apt configuration so the machine's own sources stay untouched.
mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
  | head -1 | awk '{print $2}' || true)
mirror=${mirror:-http://deb.debian.org/debian}
APTDIR=$WORK/apt
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/sources.list.d"
echo "deb-src ${mirror%/} bookworm main" >"$APTDIR/sources.list"
cat >"$APTDIR/apt.conf" <<EOF
Dir::Etc::SourceList "$APTDIR/sources.list";
Dir::Etc::SourceParts "$APTDIR/sources.list.d";
Dir::State::Lists "$APTDIR/lists";
Dir::Cache "$APTDIR/cache";
EOF
export APT_CONFIG=$APTDIR/apt.conf

version_file=$WORK/debian-version
if [[ ! -s $version_file || -n $(find "$version_file" -mmin +10080 2>/dev/null) ]]; then
  apt-get update -qq -o APT::Sandbox::User=root >/dev/null
  apt-cache showsrc kubernetes | awk '/^Version:/ {print $2; exit}' >"$version_file"
fi
version=$(cat "$version_file")
[[ -n $version ]] || { log "no kubernetes source package found on $mirror"; exit 1; }
out=$KUBE_CACHE/$version/kube-apiserver
if [[ -x $out ]]; then
  echo "$out"
  exit 0
fi

log "building kube-apiserver from Debian source kubernetes $version (about 6 minutes)"
started=$(date +%s)
SRC=$WORK/src-$version
if [[ ! -d $SRC/kubernetes ]]; then
  rm -rf "$SRC"
  mkdir -p "$SRC"
  (cd "$SRC" && apt-get source -qq --download-only -o APT::Sandbox::User=root "kubernetes=$version" >/dev/null \
    && dpkg-source -q -x kubernetes_*.dsc kubernetes >/dev/null)
fi
tree=$SRC/kubernetes

# GOPATH mode: Go 1.19 refuses 1.20's go.mod with -mod=vendor.
export GOPATH=$WORK/gopath GO111MODULE=off CGO_ENABLED=0 GOPROXY=off GOTOOLCHAIN=local GOFLAGS=
export GOCACHE=$KUBE_CACHE/gocache
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$tree" "$GOPATH/src/k8s.io/kubernetes"
pkgroot=$GOPATH/src/k8s.io/kubernetes

# reflect2 1.0.1 segfaults under Go >= 1.18; use Debian's newer reflect2 and json-iterator.
for dep in github.com/modern-go/reflect2 github.com/json-iterator/go; do
  if [[ ! -e $tree/vendor/$dep/.from-debian ]]; then
    rm -rf "${tree:?}/vendor/$dep"
    mkdir -p "$tree/vendor/$dep"
    cp -r "/usr/share/gocode/src/$dep/." "$tree/vendor/$dep/"
    find "$tree/vendor/$dep" -name '*_test.go' -delete
    touch "$tree/vendor/$dep/.from-debian"
  fi
done

# The tarball lacks the generated OpenAPI definitions.
openapi=$tree/pkg/generated/openapi/zz_generated.openapi.go
if [[ ! -s $openapi ]] || ! grep -q apiextensions "$openapi"; then
  log "generating OpenAPI definitions"
  (cd "$pkgroot" && go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen)
  # as upstream's Makefile.generated_files (KUBE target): every tagged dir, by its path under
  # k8s.io/kubernetes (vendored ones too; -R: vendor/k8s.io/* are symlinks into staging/),
  # minus code-generator and sample-apiserver
  pkgs=$(cd "$pkgroot" && grep -Rl --include='*.go' '+k8s:openapi-gen=' pkg cmd plugin vendor/k8s.io \
      2>/dev/null | xargs -n1 dirname | LC_ALL=C sort -u \
    | grep -v -E '^vendor/k8s.io/(code-generator|sample-apiserver)/' \
    | sed -e 's#^#k8s.io/kubernetes/#' | paste -sd, -)
  boiler=$tree/vendor/k8s.io/code-generator/hack/boilerplate.go.txt
  (cd "$pkgroot" && "$WORK/openapi-gen" --logtostderr -i "$pkgs" \
    -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
    -h "$boiler" -r "$WORK/openapi-violations.txt" -o "$GOPATH/src" >"$WORK/openapi-gen.log" 2>&1) \
    || { tail -20 "$WORK/openapi-gen.log" >&2; exit 1; }
fi

mkdir -p "$KUBE_CACHE/$version"
vpkg=k8s.io/kubernetes/vendor/k8s.io/component-base/version
ldflags="-s -w -X $vpkg.gitVersion=v1.20.2 -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=20 -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
(cd "$pkgroot" && go build -tags selinux,notest -trimpath -ldflags "$ldflags" \
  -o "$out.tmp" k8s.io/kubernetes/cmd/kube-apiserver)
mv "$out.tmp" "$out"
log "built $out in $(( $(date +%s) - started ))s"
echo "$out"
