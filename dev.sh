#!/usr/bin/env bash
# tracer's one entry point for a fresh machine: installs what tracer needs, then runs it.
#
#   ./dev.sh demo    the main job on the local lab: lab up, path, follow curl -> httpbin, lab down
#   ./dev.sh test    the whole test suite (needs root: the tests build network namespaces)
#
# Installs the Debian packages it lacks (tcpdump, tshark, iproute2, curl, iptables, iperf3, and
# dnsmasq and conntrack for the lab's cluster DNS and kube-proxy)
# and a virtualenv in .venv with tracer and its Python dependencies. Run as root.
set -euo pipefail
cd "$(dirname "$0")"
# ip, sysctl, bridge and tc live in the sbin directories, which a bare environment's PATH may lack
export PATH="${PATH:+$PATH:}/usr/local/sbin:/usr/sbin:/sbin"

APT_PACKAGES=(tcpdump tshark wireshark-common iproute2 curl iptables iperf3 procps util-linux dnsmasq-base conntrack ethtool)

install_system() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    # The distribution's Python (built with PGO and LTO) runs tracer's per-packet loops about a
    # third faster than a Python built from source without them (as pyenv does by default).
    if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    elif ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        missing+=(python3-venv)
    fi
    if ((${#missing[@]})); then
        echo ">> apt-get install ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

python_for_venv() {
    # the distribution's (see install_system) if it is new enough, else python3 on PATH
    if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo /usr/bin/python3
    else
        echo python3
    fi
}

install_python() {
    local py
    py=$(python_for_venv)
    if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "tracer needs Python >= 3.11 ($py is $("$py" --version))" >&2
        exit 1
    fi
    [ -x .venv/bin/python ] || "$py" -m venv .venv
    # Installed before from the same pyproject.toml, and it all imports: nothing to do (pip
    # would take ~10 s to find that out on every run).
    local stamp
    stamp="$(sha256sum pyproject.toml | cut -d' ' -f1) $(.venv/bin/python --version 2>&1)"
    if [ -f .venv/.tracer-installed ] && [ "$(cat .venv/.tracer-installed)" = "$stamp" ] &&
        .venv/bin/python -c 'import tracer, scapy, kubernetes, pyshark, click, rich, pytest, hypothesis, kmock, httpbin, gunicorn' 2>/dev/null; then
        echo ">> .venv is up to date" >&2
        return
    fi
    echo ">> pip install -e .[test] into .venv" >&2
    # editable_mode=compat: a plain path entry in a .pth instead of an import hook, which costs
    # every tracer command ~20 ms at start
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" --config-settings editable_mode=compat
    echo "$stamp" > .venv/.tracer-installed
}

if [ "$(id -u)" != 0 ]; then
    echo "run as root (sudo ./dev.sh $*): tracer's lab and tests build network namespaces" >&2
    exit 1
fi

case "${1:-}" in
    demo)
        install_system
        install_python
        export PATH="$PWD/.venv/bin:$PATH"
        tracer lab down >/dev/null 2>&1 || true
        trap 'tracer lab down' EXIT
        tracer lab up
        tracer path curl httpbin
        tracer follow curl httpbin
        ;;
    test)
        shift
        install_system
        install_python
        exec .venv/bin/python -m pytest -q "$@"
        ;;
    *)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
