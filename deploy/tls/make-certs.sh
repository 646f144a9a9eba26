#!/usr/bin/env bash
# TLS certificates for ONE reattn-batch Dask cluster: a certificate authority of its own and
# one certificate + key, signed by it, that the scheduler, the workers and the clients
# (reattn-batch run / job run) all present. Dask then encrypts every connection and each
# side accepts only peers whose certificate this CA signed (it checks the chain, not host
# names).
#
#   deploy/tls/make-certs.sh DIR                               # cluster `reattn-batch`
#   deploy/tls/make-certs.sh --name reattn-region --days 30 DIR
#
# DIR (created with mode 0700 if missing) gets ca.crt, tls.crt and tls.key (mode 0600).
# The CA's own key is never written to DIR: it is thrown away once tls.crt is signed, so
# no other certificate can ever be signed by this CA, and only holders of tls.key can
# join. To rotate, make a new set and replace the files (or the Secret). Existing files
# are never overwritten, not even by one that appears while the set is made. The last
# lines printed are the `kubectl create secret` command for the Secret the Kubernetes
# manifests mount (NAME-tls) and the `dask` options for the files;
# --quiet prints nothing. Needs the `openssl` command (1.1.1 or newer).
set -euo pipefail

me="make-certs.sh"
die() { echo "$me: error: $*" >&2; exit 1; }
usage() { echo "usage: $me [--name NAME] [--days N] [--quiet] DIR"; }

name="reattn-batch"
days=365
quiet=""
dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --name) [ $# -ge 2 ] || die "--name needs a value"; name="$2"; shift 2 ;;
        --name=*) name="${1#--name=}"; shift ;;
        --days) [ $# -ge 2 ] || die "--days needs a value"; days="$2"; shift 2 ;;
        --days=*) days="${1#--days=}"; shift ;;
        -q | --quiet) quiet=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; [ $# -eq 1 ] || die "$(usage)"; dir="$1"; shift ;;
        -*) die "unknown option $1 ($(usage))" ;;
        *) [ -z "$dir" ] || die "one DIR only ($(usage))"; dir="$1"; shift ;;
    esac
done
[ -n "$dir" ] || die "no DIR given ($(usage))"
[[ "$days" =~ ^[1-9][0-9]{0,4}$ ]] || die "--days must be a whole number of days, 1 to 99999, not '$days'"
# the Secret's name is NAME-tls: a DNS label
[[ "$name" =~ ^[a-z0-9]([-a-z0-9]{0,57}[a-z0-9])?$ ]] \
    || die "--name must be lower-case letters, digits and '-' (a Kubernetes name), not '$name'"
command -v openssl >/dev/null || die "openssl not found: install it (e.g. apt-get install openssl)"

umask 077  # every file and folder made below is private to this user
if [ ! -e "$dir" ]; then
    mkdir -p -- "$dir" || die "cannot create $dir"
    chmod 0700 "$dir"  # a folder of our own; an existing one keeps its mode (the key is 0600)
fi
dir="$(cd -- "$dir" && pwd)"
for f in ca.crt tls.crt tls.key; do
    [ ! -e "$dir/$f" ] || die "$dir/$f exists: give a new or empty DIR (nothing was overwritten)"
done
work="$(mktemp -d "$dir/.make-certs.XXXXXX")"
trap 'rm -rf -- "$work"' EXIT

cat > "$work/openssl.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $name
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[party]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = DNS:$name-scheduler, DNS:localhost, IP:127.0.0.1
CNF

ssl() {  # openssl, its chatter kept unless it fails
    local out
    out="$(openssl "$@" 2>&1)" || die "openssl $1 failed: $(echo "$out" | tail -n 1)"
}
ssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ca.key"
ssl req -new -x509 -config "$work/openssl.cnf" -extensions ca -subj "/CN=$name Dask CA" \
    -key "$work/ca.key" -sha256 -days "$days" -out "$work/ca.crt"
ssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/tls.key"
ssl req -new -config "$work/openssl.cnf" -subj "/CN=$name" -key "$work/tls.key" \
    -out "$work/tls.csr"
ssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -sha256 -days "$days" \
    -extfile "$work/openssl.cnf" -extensions party -out "$work/tls.crt"
ssl verify -CAfile "$work/ca.crt" -purpose sslserver "$work/tls.crt"
ssl verify -CAfile "$work/ca.crt" -purpose sslclient "$work/tls.crt"

chmod 0644 "$work/ca.crt" "$work/tls.crt"
chmod 0600 "$work/tls.key"
# into DIR with `ln`, which fails rather than replace a file that appeared since the check
# above (another make-certs.sh, say); ca.key goes with $work
placed=()
for f in ca.crt tls.crt tls.key; do
    # -T: a folder that appeared at $dir/$f is an error too, never a place to link into
    if ! out="$(ln -T -- "$work/$f" "$dir/$f" 2>&1)"; then
        [ "${#placed[@]}" -eq 0 ] || rm -f -- "${placed[@]}"
        [ -e "$dir/$f" ] && die "$dir/$f appeared meanwhile: give a new or empty DIR (nothing was overwritten)"
        die "cannot place $dir/$f ($(echo "$out" | tail -n 1))"
    fi
    placed+=("$dir/$f")
done

[ -n "$quiet" ] && exit 0
cat <<MSG
$me: wrote $dir/ca.crt, tls.crt and tls.key (valid $days days; the CA's key was not kept)
Kubernetes Secret for the manifests:
  kubectl create secret generic $name-tls --from-file=$dir/ca.crt --from-file=$dir/tls.crt --from-file=$dir/tls.key
Dask (scheduler and workers):
  --tls-ca-file $dir/ca.crt --tls-cert $dir/tls.crt --tls-key $dir/tls.key
MSG
