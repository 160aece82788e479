# tools/need.sh — sourced by the tools' scripts: installs the Debian packages of the
# commands that are missing. Each argument is COMMAND:PACKAGE.
install_missing() {
  local need=() tool sudo=""
  for tool in "$@"; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
  done
  [ ${#need[@]} -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}"
}
