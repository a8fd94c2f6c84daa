# Host set-up steps shared by scripts/setup (a development checkout) and scripts/install
# (a production install), sourced by both. Each step checks before it acts, so running
# it again is quick and changes nothing. Needs bash and root.

# say PREFIX MESSAGE...: a bold "[PREFIX]" and the message.
say_as() { local who=$1; shift; printf '\033[1m[%s]\033[0m %s\n' "$who" "$*"; }

# require_root SCRIPT WHY
require_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "$1: must run as root ($2)" >&2
    exit 1
  fi
}

# install_debian_packages PACKAGE...: apt-get only what dpkg does not already have.
install_debian_packages() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# kernel_header_packages: linux-headers-<release> when Debian packages the running kernel,
# else the generic linux-headers-amd64 that link_kernel_headers points the kernel at. When the
# exact headers are installed already (a gateway VM's box) it needs no package lists; otherwise a
# fresh host may have none yet, and the exact headers are found only with them.
kernel_header_packages() {
  local exact="linux-headers-$(uname -r)"
  if dpkg-query -W -f='${Status}' "$exact" 2>/dev/null | grep -q 'install ok installed'; then
    echo "$exact"
    return
  fi
  ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -qq >&2
  if apt-cache show "$exact" >/dev/null 2>&1; then
    echo "$exact"
  else
    echo linux-headers-amd64
  fi
}

# link_kernel_headers: bcc compiles against kernel headers; a running kernel without packaged
# ones gets its module directory pointed at Debian's newest generic headers.
link_kernel_headers() {
  local kver hdr common
  kver=$(uname -r)
  if [ ! -e "/lib/modules/$kver/build/Makefile" ]; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n 1)
    common=${hdr%-amd64}-common
    say "linking kernel headers for $kver to $hdr"
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$hdr" "/lib/modules/$kver/build"
    ln -sfn "$common" "/lib/modules/$kver/source"
  fi
}

# mount_bpffs: pinned maps live on bpffs.
mount_bpffs() {
  if ! grep -q ' /sys/fs/bpf bpf ' /proc/mounts; then
    say "mounting bpffs at /sys/fs/bpf"
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
  fi
}

# resolve_kafka_jars CHECKOUT CACHE_ROOT: the embedded broker's jars, resolved once from Maven
# Central into CACHE_ROOT/kafka-<version>; keyed on the pom's hash, so a changed pom resolves afresh.
resolve_kafka_jars() {
  local here=$1 cache_root=$2 version cache stamp
  version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/scripts/kafka/pom.xml")
  cache="$cache_root/kafka-$version"
  stamp="$cache/.complete-$(sha256sum "$here/scripts/kafka/pom.xml" | cut -c1-16)"
  if [ ! -e "$stamp" ]; then
    say "resolving Apache Kafka $version jars into $cache"
    rm -rf "$cache"
    mkdir -p "$cache"
    (cd "$here/scripts/kafka" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$cache")
    touch "$stamp"
  fi
}
