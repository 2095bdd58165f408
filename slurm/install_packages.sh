# Sourced by slurm/cluster.sh and slurm/two_nodes.sh: install_packages PKG... installs the Debian packages that are
# missing (quietly; the log's tail on failure). It waits up to 10 minutes for a dpkg lock another apt holds.
# policy-rc.d (exit 101) blocks the packages' own service starts: expected, the scripts start the daemons themselves.
install_packages() {
    local missing=() p apt_log
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    say "installing: ${missing[*]}"
    apt-get update -qq -o DPkg::Lock::Timeout=600
    apt_log=$(mktemp)
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}" >"$apt_log" 2>&1 \
        || { tail -20 "$apt_log"; exit 1; }
}
