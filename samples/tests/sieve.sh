#!/bin/bash
# sieve N must print the first N primes: checked against a literal list and
# against coreutils' factor (a prime p is the only factor of p).
set -euo pipefail
exe=$1
expected="2 3 5 7 11 13 17 19 23 29 31 37 41 43 47 53 59 61 67 71 73 79 83 89 97"
actual=$("$exe" 25 | tr '\n' ' ' | sed 's/ $//')
[ "$actual" = "$expected" ] || { echo "sieve 25: got '$actual', want '$expected'"; exit 1; }
echo "sieve: first 25 primes match the literal list"
if command -v factor > /dev/null; then
    for n in 1 100 500; do
        "$exe" "$n" > "${TMPDIR:-/tmp}/sieve.$$"
        last=$(tail -n 1 "${TMPDIR:-/tmp}/sieve.$$")
        # Every prime up to the last one printed, by factor: lines "p: p".
        seq 2 "$last" | factor | awk 'NF == 2 { sub(":", "", $1); print $1 }' |
            diff -u - "${TMPDIR:-/tmp}/sieve.$$"
        rm -f "${TMPDIR:-/tmp}/sieve.$$"
        echo "sieve $n: matches factor"
    done
fi
[ -z "$("$exe" 0)" ] || { echo "sieve 0 must print nothing"; exit 1; }
