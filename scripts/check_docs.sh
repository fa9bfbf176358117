#!/usr/bin/env bash
# Checks that the README files name what the repository ships (part of the lint phase of
# scripts/test.sh): every pg_regress file, scenario script and upgrade script in README.md, every
# benchmark file in bench/README.md or README.md, every audience.* setting and every public SQL
# function (SQL files and #[pg_extern]s, names without a leading underscore) in README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
missing=0
need() { # file-with-the-docs what name
    if ! grep -qF -- "$3" "$1"; then
        echo "check_docs: $1 does not mention $2 $3" >&2
        missing=$((missing + 1))
    fi
}
for f in tests/pg_regress/sql/*.sql scripts/tests/[!_]*.sh sql/pg_audience--*--*.sql; do
    need README.md "file" "$(basename "$f")"
done
for f in bench/*; do
    b="$(basename "$f")"
    [[ "$b" == README.md || "$b" == requirements.txt ]] && continue
    grep -qF -- "$b" README.md || need bench/README.md "file" "$b"
done
while read -r g; do
    need README.md "setting" "$g"
done < <(grep -ohE 'c"audience\.[a-z_]+"' src/guc.rs | sed -E 's/^c"(.*)"$/\1/' | sort -u)
{
    grep -hoE '^CREATE (OR REPLACE )?FUNCTION audience\.[a-z][a-z0-9_]*' sql/schema.sql sql/catalog.sql sql/audiences.sql sql/demo_shop.sql |
        sed -E 's/.*audience\.//'
    # #[pg_extern] functions: the SQL name (name = "...") or the Rust name of the next fn.
    awk '/^[[:space:]]*#\[pg_extern/ { ext = 1; name = ""; if (match($0, /name = "[^"]+"/)) name = substr($0, RSTART + 8, RLENGTH - 9); next }
         ext && /^[[:space:]]*(pub )?fn / { if (name == "") { sub(/^[[:space:]]*(pub )?fn /, ""); sub(/[(<].*/, ""); name = $0 } print name; ext = 0 }' src/api/*.rs src/affinity/*.rs |
        grep -v '^_'
} | sort -u | while read -r fn; do
    grep -qE "(^|[^a-z_])$fn\(" README.md || { echo "check_docs: README.md does not mention function $fn(" >&2; echo x; }
done | grep -q x && missing=$((missing + 1))
if ((missing > 0)); then
    echo "check_docs: the README files miss what is listed above" >&2
    exit 1
fi
echo "check_docs: README.md and bench/README.md name every test, script, setting and function"
