# The installed layout, shared by scripts/install and scripts/uninstall (sourced).

# parse_layout_args SCRIPT ARGS...: --prefix DIR / APPLIANCE_PREFIX and --no-system /
# APPLIANCE_NO_SYSTEM=1 set prefix, no_system and the paths below; other arguments go to `rest`.
parse_layout_args() {
  local script=$1
  shift
  prefix=${APPLIANCE_PREFIX:-}
  no_system=${APPLIANCE_NO_SYSTEM:-0}
  rest=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --prefix)
        [ $# -ge 2 ] || { echo "scripts/$script: --prefix needs a directory" >&2; exit 2; }
        prefix=$2
        shift 2
        ;;
      --prefix=*) prefix=${1#--prefix=}; shift ;;
      --no-system) no_system=1; shift ;;
      *) rest+=("$1"); shift ;;
    esac
  done
  if [ -n "$prefix" ]; then
    case "$prefix" in
      /*) prefix=${prefix%/} ;;
      *) echo "scripts/$script: --prefix must be an absolute path, got '$prefix'" >&2; exit 2 ;;
    esac
  fi
  etc_dir="$prefix/etc/appliance"
  state_dir="$prefix/var/lib/appliance"
  opt_dir="$prefix/opt/appliance"
  venv="$opt_dir/venv"
  unit_dir="$prefix/etc/systemd/system"
  bin_dir="$prefix/usr/local/bin"
  config="$etc_dir/appliance.yaml"
}

# install_etc_file SOURCE DEST MODE: DEST if it is not there; beside it as DEST.dist if the
# operator's DEST differs from the new default; nothing when they agree.
install_etc_file() {
  local source=$1 dest=$2 mode=$3
  if [ ! -e "$dest" ]; then
    install -m "$mode" "$source" "$dest"
    say "wrote $dest"
  elif cmp -s "$source" "$dest"; then
    rm -f "$dest.dist"
  else
    install -m "$mode" "$source" "$dest.dist"
    say "kept $dest (it differs from the new default, written beside it as $dest.dist)"
  fi
}

# render_unit TEMPLATE DEST: the unit with the layout's paths filled in.
render_unit() {
  sed -e "s|@VENV@|$venv|g" -e "s|@CONFIG@|$config|g" -e "s|@STATE_DIR@|$state_dir|g" "$1" > "$2.new"
  chmod 0644 "$2.new"
  mv "$2.new" "$2"
}

# systemd_running: true when PID 1 is systemd (not so in a container or a chroot), so systemctl works.
systemd_running() {
  [ -d /run/systemd/system ] && command -v systemctl >/dev/null
}
