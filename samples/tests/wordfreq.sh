#!/bin/bash
# wordfreq DIR K must print the same top K as tr | sort | uniq -c (C locale),
# ties broken by word: count descending, then word ascending.
set -euo pipefail
exe=$1
export LC_ALL=C
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
d=$tmp/corpus
mkdir -p "$d/sub/deeper"
# A small generated corpus: mixed case, punctuation, digits, apostrophes,
# underscores, UTF-8 letters, tabs, CRLF, a file without a final newline,
# an empty file, and many ties.
cat > "$d/a.txt" <<'TXT'
The quick brown Fox jumps over the lazy dog. THE DOG barks; the fox runs!
It's a dog's life -- don't you think? foo_bar foo-bar FOO123bar x1y2z3
TXT
printf 'caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9 Caf\xc3\xa9\r\nfox\tfox\tdog\r\n' > "$d/sub/utf8.txt"
printf 'tail words without newline zeta alpha' > "$d/sub/deeper/nonl.txt"
: > "$d/sub/empty.txt"
for i in $(seq 1 40); do echo "word$i alpha beta gamma delta epsilon w$((i % 7))"; done > "$d/sub/deeper/gen.txt"
seq 1 500 | awk '{printf "tok%c%c ", 97 + $1 % 26, 97 + ($1 * 7) % 26} END {print ""}' > "$d/toks.txt"

reference() {  # $1 = K
    find "$d" -type f -print0 | sort -z | while IFS= read -r -d '' f; do
        tr -cs 'A-Za-z' '\n' < "$f"; echo   # a word never spans two files
    done | tr 'A-Z' 'a-z' | grep -v '^$' | sort | uniq -c | sort -k1,1nr -k2,2 | awk -v k="$1" 'NR <= k {print $1, $2}'
}
for k in 1 5 20 1000; do
    for w in 1 3; do
        reference "$k" > "$tmp/expected"
        "$exe" "$d" "$k" "$w" > "$tmp/actual"
        diff -u "$tmp/expected" "$tmp/actual"
    done
done
echo "wordfreq: top-K lists match tr|sort|uniq -c ($(wc -l < "$tmp/actual") distinct words)"
# The default corpus, if present, also matches.
if [ -d /usr/share/common-licenses ]; then
    d=/usr/share/common-licenses
    reference 20 > "$tmp/expected"
    "$exe" > "$tmp/actual"
    diff -u "$tmp/expected" "$tmp/actual"
    echo "wordfreq: /usr/share/common-licenses top 20 matches"
fi
