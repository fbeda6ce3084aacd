#!/usr/bin/env bash
# Download and extract the official CMU AN4 corpus (NIST SPHERE audio) as <dest_dir>/an4/{etc,wav}.
# Source: http://www.speech.cs.cmu.edu/databases/an4/ (as in ESPnet egs/an4/asr1/run.sh).
# Usage: recipes/an4/local/download_an4.sh <dest_dir>
set -euo pipefail

URL="${AN4_URL:-http://www.speech.cs.cmu.edu/databases/an4/an4_sphere.tar.gz}"

if [ $# -ne 1 ]; then
    echo "usage: $0 <dest_dir>" >&2
    exit 2
fi
dest="$1"

if [ -d "${dest}/an4/etc" ]; then
    echo "$0: ${dest}/an4/etc already exists, skipping download"
    exit 0
fi

mkdir -p "${dest}"
tarball="${dest}/an4_sphere.tar.gz"
partial="${tarball}.part"

fail() {
    echo "$0: ERROR: $*" >&2
    echo "$0: you can download ${URL} by hand and extract it in ${dest} (giving ${dest}/an4/etc and ${dest}/an4/wav)" >&2
    exit 1
}

if [ ! -s "${tarball}" ]; then
    echo "$0: downloading ${URL} -> ${tarball}"
    if command -v curl >/dev/null 2>&1; then
        curl --fail --location --retry 3 --connect-timeout 30 -o "${partial}" "${URL}" \
            || { rm -f "${partial}"; fail "download with curl failed"; }
    elif command -v wget >/dev/null 2>&1; then
        wget --tries=3 --timeout=30 -O "${partial}" "${URL}" \
            || { rm -f "${partial}"; fail "download with wget failed"; }
    else
        fail "neither curl nor wget is installed"
    fi
    mv "${partial}" "${tarball}"
fi

echo "$0: extracting ${tarball}"
tar -xzf "${tarball}" -C "${dest}" || fail "could not extract ${tarball} (corrupt download? delete it and retry)"

if [ ! -d "${dest}/an4/etc" ] || [ ! -d "${dest}/an4/wav" ]; then
    fail "${tarball} did not contain an4/etc and an4/wav"
fi
rm -f "${tarball}"
echo "$0: AN4 is in ${dest}/an4"
