#!/bin/bash
# digest DIR must print exactly what `find DIR -type f | sort | xargs sha256sum` prints.
set -euo pipefail
exe=$1
export LC_ALL=C
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
d=$tmp/tree
mkdir -p "$d/a/b/c" "$d/empty" "$d/x y"
printf 'hello\n' > "$d/hello.txt"
: > "$d/a/zero"
head -c 1000000 /dev/urandom > "$d/a/b/big.bin"
for i in $(seq 1 50); do echo "file $i" > "$d/a/b/c/f$i"; done
echo spaced > "$d/x y/with space.txt"
ln -s hello.txt "$d/link-to-hello"   # not a regular file: find -type f skips it, so must digest
expected=$tmp/expected
actual=$tmp/actual
find "$d" -type f -print0 | sort -z | xargs -0 sha256sum > "$expected"
"$exe" "$d" 4 > "$actual"
diff -u "$expected" "$actual"
# One worker gives the same output.
"$exe" "$d" 1 | diff -u "$expected" -
# The output is accepted by sha256sum -c.
sha256sum --quiet -c "$actual"
echo "digest: $(wc -l < "$actual") files match sha256sum"
