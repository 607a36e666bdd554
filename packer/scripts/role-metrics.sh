#!/usr/bin/env bash
# metrics: InfluxDB 1.x from Debian and Grafana OSS from Grafana's signed APT repository.
# cloud-init (roles/metrics/cloud-init.yaml) configures, enables and starts both, and
# runs tyrell-grafana-tls (installed at the end), which makes Grafana's certificate.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# Grafana's APT signing key; a key with another fingerprint fails the build (a key
# rotation is for a human to check, not for the build to accept).
GRAFANA_KEY_URL=https://apt.grafana.com/gpg.key
GRAFANA_KEY_FPR=B53AE77BADB630A683046005963FA27710458545

apt-get -y -q install --no-install-recommends influxdb influxdb-client

tmp=$(mktemp -d)
curl -sfSL -o "$tmp/grafana.asc" "$GRAFANA_KEY_URL"
fprs=$(gpg --batch --with-colons --show-keys "$tmp/grafana.asc" | awk -F: '$1 == "fpr" {print $10}')
if ! grep -qx "$GRAFANA_KEY_FPR" <<<"$fprs"; then
  echo "tyrell: Grafana key fingerprint mismatch: got $fprs" >&2
  exit 1
fi
install -d -m 0755 /etc/apt/keyrings
gpg --batch --dearmor < "$tmp/grafana.asc" > /etc/apt/keyrings/grafana.gpg
rm -rf "$tmp"
echo "deb [signed-by=/etc/apt/keyrings/grafana.gpg] https://apt.grafana.com stable main" \
  > /etc/apt/sources.list.d/grafana.list
apt-get update -q
apt-get -y -q install --no-install-recommends grafana

systemctl disable --now influxdb.service grafana-server.service || true

# Grafana serves HTTPS on 3000 (roles/metrics/cloud-init.yaml, docs/MULTI-REGION.md 8.5)
# with a certificate tyrell-grafana-tls makes on the box: tyrell-grafana-tls.service,
# whose unit (with the SSM parameter's name and the region) comes from the user data,
# runs it as root at every boot before grafana-server. The script lives in the image, not
# in the user data: the dashboard leaves too little of EC2's 16 KB for it. openssl is
# Debian's, a dependency of ca-certificates (base.sh).
#
# * The key: ECDSA P-256, /etc/grafana/tls/grafana.key, 0640 root:grafana. Made once,
#   kept across reboots and certificate renewals.
# * The certificate: self-signed with that key, /etc/grafana/tls/grafana.crt (0644), for
#   the box's private IP and, when the box has them, its public IP and public DNS name,
#   read from the instance metadata (IMDSv2: a token first). Made again (same key) only
#   when those names change (a stop and start moves a public IP) or when it expires within
#   30 days; valid 825 days, the longest Apple's systems accept for a TLS server
#   certificate. CA:FALSE and serverAuth: browsers refuse a CA certificate as a server's.
# * Its PEM (public; never the key) is put at every boot into the SSM String PARAM, the one
#   parameter the box's instance role may write (ssm:PutParameter on it alone). The
#   operator fetches it there and verifies Grafana against it:
#     aws ssm get-parameter --region REGION --name PARAM --query Parameter.Value --output text > grafana.pem
#     curl --cacert grafana.pem https://PRIVATE_IP:3000/api/health
# * Order: key, certificate, publication, then Grafana's group on the key. A publication
#   that still fails after its retries fails the unit, after the permissions are set:
#   grafana-server only Wants the unit, so it still serves with the certificate.
cat > /usr/local/sbin/tyrell-grafana-tls <<'EOF'
#!/bin/bash
# tyrell-grafana-tls PARAM REGION: Grafana's certificate, made on this box, and its PEM
# put into the SSM String PARAM (packer/scripts/role-metrics.sh, docs/MULTI-REGION.md 8.5).
set -euo pipefail
param=${1:?usage: tyrell-grafana-tls PARAM REGION}
region=${2:?usage: tyrell-grafana-tls PARAM REGION}
dir=/etc/grafana/tls
key=$dir/grafana.key
crt=$dir/grafana.crt
imds=http://169.254.169.254/latest
token=
for i in 1 2 3 4 5; do
  token=$(curl -fsS -m 5 -X PUT "$imds/api/token" -H "X-aws-ec2-metadata-token-ttl-seconds: 60") && break
  sleep 2
done
[ -n "$token" ] || { echo "tyrell-grafana-tls: no IMDSv2 token" >&2; exit 1; }
# A name the box does not have (404) is empty.
md() { curl -fsS -m 5 -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/$1" 2>/dev/null || true; }
ip=$(md local-ipv4)
[ -n "$ip" ] || { echo "tyrell-grafana-tls: no private IP in the instance metadata" >&2; exit 1; }
san="IP:$ip"
pub=$(md public-ipv4)
[ -z "$pub" ] || san="$san,IP:$pub"
dns=$(md public-hostname)
[ -z "$dns" ] || san="$san,DNS:$dns"

install -d -m 0750 "$dir"
umask 077
if [ ! -s "$key" ]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key.new"
  mv "$key.new" "$key"
  rm -f "$crt"
fi
if [ "$(cat "$dir/names" 2>/dev/null)" != "$san" ] || ! openssl x509 -in "$crt" -noout -checkend 2592000 >/dev/null 2>&1; then
  openssl req -new -x509 -key "$key" -days 825 -subj "/CN=$ip" -addext "subjectAltName=$san" \
    -addext basicConstraints=critical,CA:FALSE -addext keyUsage=critical,digitalSignature \
    -addext extendedKeyUsage=serverAuth -out "$crt.new"
  chmod 0644 "$crt.new"
  mv "$crt.new" "$crt"
  printf '%s\n' "$san" > "$dir/names"
  echo "tyrell-grafana-tls: new certificate for $san"
fi

published=
for i in 1 2 3 4 5 6; do
  if aws ssm put-parameter --region "$region" --name "$param" --type String --overwrite \
      --value "file://$crt" >/dev/null; then
    published=1
    break
  fi
  echo "tyrell-grafana-tls: cannot put $param yet (attempt $i), retrying" >&2
  sleep $((i * 3))
done

# Grafana reads the key as group grafana; an image without Grafana (the local cloud's,
# which cannot fetch it) keeps it root's.
if getent group grafana >/dev/null; then chgrp grafana "$dir" "$key"; fi
chmod 0640 "$key"
[ -n "$published" ] || { echo "tyrell-grafana-tls: the certificate is not in $param" >&2; exit 1; }
echo "tyrell-grafana-tls: $crt ($san) is in SSM $param"
EOF
chmod 0750 /usr/local/sbin/tyrell-grafana-tls
