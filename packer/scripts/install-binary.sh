# Sourced by the role scripts: install one tyrell binary uploaded by Packer's file
# provisioners (from binaries_dir) into /usr/local/bin, the path the systemd units in
# the roles' cloud-init use.
install_binary() {
  local name=$1 src=/tmp/tyrell/bin/$1
  if [ ! -s "$src" ]; then
    echo "tyrell: $name is missing or empty in binaries_dir (build it: cargo build --release)" >&2
    exit 1
  fi
  install -m 0755 -o root -g root "$src" "/usr/local/bin/$name"
  echo "tyrell: installed /usr/local/bin/$name"
}
