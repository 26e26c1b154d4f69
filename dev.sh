#!/usr/bin/env bash
# tracer's one entry point for a fresh machine: installs what tracer needs, then runs it.
#
#   ./dev.sh demo    the main job on the local lab: lab up, path, follow curl -> httpbin, lab down
#   ./dev.sh test    the whole test suite (needs root: the tests build network namespaces)
#
# Installs the Debian packages it lacks (tcpdump, tshark, iproute2, curl, iptables, iperf3;
# dnsmasq and conntrack for the lab's cluster DNS and kube-proxy; ethtool for its NIC offloads;
# mmdebstrap, podman, runc and containerd for the capture image's test)
# and a virtualenv in .venv with tracer and its Python dependencies. Run as root.
set -euo pipefail
cd "$(dirname "$0")"
# ip, sysctl, bridge and tc live in the sbin directories, which a bare environment's PATH may lack
export PATH="${PATH:+$PATH:}/usr/local/sbin:/usr/sbin:/sbin"

APT_PACKAGES=(tcpdump tshark wireshark-common iproute2 curl iptables iperf3 procps util-linux dnsmasq-base conntrack nftables ethtool mmdebstrap podman runc containerd)

install_system() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    local py
    py=$(find_python) || exit 1
    if ! "$py" -c 'import venv, ensurepip' 2>/dev/null; then
        case "${py##*/}" in
            python3.[0-9]*) missing+=("${py##*/}-venv") ;;  # (python3.11 beside an older python3)
            *) missing+=(python3-venv) ;;
        esac
    fi
    if ((${#missing[@]})); then
        echo ">> apt-get install ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# tracer needs Python >= 3.11. The distribution's first: built with PGO and LTO, it runs tracer's
# per-packet loops about a third faster than a Python built from source without them (as pyenv
# does by default). Then python3 on PATH, then a newer one beside an older python3 (Ubuntu 22.04's
# python3 is 3.10; its python3.11 package is not the default).
PYTHONS=(/usr/bin/python3 python3 python3.13 python3.12 python3.11)

find_python() {
    # prints the first of PYTHONS that is >= 3.11; else says what there is and what to install
    local name py version tried=" " found=""
    for name in "${PYTHONS[@]}"; do
        py=$(command -v "$name") || continue
        [[ "$tried" == *" $py "* ]] && continue
        tried+="$py "
        if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"
            return 0
        fi
        version=$("$py" --version 2>&1) || true
        [[ "$version" == "Python "* ]] && found+="${found:+, }$py is ${version%%$'\n'*}"
    done
    echo "tracer needs Python >= 3.11, and there is none here (${found:-no python3 at all})" >&2
    echo "install one, e.g.: apt-get install python3.11 python3.11-venv (Ubuntu 22.04: from universe," \
        "or the deadsnakes PPA), then run $0 again" >&2
    return 1
}

install_python() {
    local py
    py=$(find_python) || exit 1
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

if [ "${1:-}" = --which-python ]; then  # the interpreter .venv is made with (tests/test_dev_sh.py)
    find_python
    exit
fi

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
