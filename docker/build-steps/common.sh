# shellcheck shell=bash
# Shared by the build steps and the deploy scripts (sourced, not run).
#   usage: prints the script's header comment (from line 2 to the first line that is not a
#          comment) as its help text.
#   run:   runs a command, or with DRY_RUN=1 prints it (shell-quoted, after "+") instead.

usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

run() {
  if [[ "${DRY_RUN:-0}" -eq 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}
