#!/usr/bin/env bash
# Scenario: ALTER EXTENSION pg_audience UPDATE from 0.1.0 (through every upgrade script to the
# current version) keeps the data, and gives the schema of
# a fresh install.
#   1. Builds 0.1.0 from its commit (OLD_COMMIT, extracted with git archive into target/upgrade/,
#      built in its own target dir seeded from target/release so dependencies are not recompiled).
#   2. Installs the 0.1.0 library and scripts, starts a fresh cluster, CREATE EXTENSION ... VERSION
#      '0.1.0': demo shop, two catalogs (one with a model), two saved audiences with history.
#   3. Installs the current release (the staged package of the current build, built if missing or
#      older than the sources), restarts, ALTER EXTENSION pg_audience UPDATE, and checks:
#      extversion; every table row and sequence of 0.1.0 unchanged (old columns compared);
#      the 0.1.0 model fails with 55000 and a hint naming audience.build; after a rebuild,
#      recommend_audience, refresh of the saved audiences, save_audience, build_incremental and
#      forget_user work (after which build_incremental asks for a full build).
#   4. Compares a canonical description of the updated schema (members, functions with their
#      arguments, results, bodies, settings, grants and comments, aggregates, tables, columns,
#      constraints, indexes, triggers, views, sequences, config tables) with a fresh CREATE
#      EXTENSION in another database, and fails with the diff when they differ.
# At exit (also on failure) the files installed before the test are put back, and the current
# release is installed if there was none.
# PGA_PG_CONFIG=/path/to/pg_config runs it against another PostgreSQL (a private copy of the system
# one, say); builds use the pg_config of pgrx-config.toml.
set -euo pipefail
PGA_SCRIPT=upgrade
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/tests/_lib.sh
source scripts/tests/_lib.sh

OLD_VERSION=0.1.0
OLD_COMMIT=a33a50d84f2b4e06db489764d6c8903c7635684f   # what users of 0.1.0 have installed
NEW_VERSION="$(sed -n -E 's/^version[[:space:]]*=[[:space:]]*"([^"]+)".*/\1/p' Cargo.toml | head -n1)"
T_START="$(t_now)"

PGC="$(pga_pg_config)"                 # the PostgreSQL the test installs into and runs
BUILD_PGC="$(pga_pgrx_pg_config)"      # the one cargo pgrx builds against
LIBDIR="$("$PGC" --pkglibdir)"
EXTDIR="$("$PGC" --sharedir)/extension"
B_LIBDIR="$("$BUILD_PGC" --pkglibdir)"
B_EXTDIR="$("$BUILD_PGC" --sharedir)/extension"
PGMAJOR="$("$BUILD_PGC" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
TARGET="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
NEW_STAGE="$TARGET/release/pg_audience-pg$PGMAJOR"
UP_DIR="$REPO_ROOT/target/upgrade"
OLD_SRC="$UP_DIR/src-$OLD_VERSION"
OLD_TARGET="$UP_DIR/target-$OLD_VERSION"
OLD_STAGE="$OLD_TARGET/release/pg_audience-pg$PGMAJOR"
t_say "upgrade $OLD_VERSION (${OLD_COMMIT:0:7}) -> $NEW_VERSION; installs into $LIBDIR and $EXTDIR"
[[ "$NEW_VERSION" != "$OLD_VERSION" ]] || t_die "Cargo.toml still says version $OLD_VERSION"
# The chain of upgrade scripts from the old version to the new one (0.1.0--0.2.0--0.3.0 ...).
UPDATE_PATH="$OLD_VERSION"
CHAIN=()
v="$OLD_VERSION"
while [[ "$v" != "$NEW_VERSION" ]]; do
    next=(sql/pg_audience--"$v"--*.sql)
    [[ -f "${next[0]}" && ${#next[@]} -eq 1 ]] ||
        t_die "no single upgrade script from $v (sql/pg_audience--$v--*.sql) on the way to $NEW_VERSION"
    CHAIN+=("$(basename "${next[0]}")")
    v="$(basename "${next[0]}" .sql)"
    v="${v##*--}"
    UPDATE_PATH="$UPDATE_PATH--$v"
    ((${#CHAIN[@]} < 20)) || t_die "the upgrade scripts loop"
done
LATEST_SCRIPT="sql/${CHAIN[-1]}"

# ------------------------------------------------------------------ installing files
SUDO=()
if ! pga_is_root && ! { [[ -w "$LIBDIR" ]] && [[ -w "$EXTDIR" ]]; }; then
    command -v sudo >/dev/null 2>&1 || t_die "not root, PostgreSQL dirs not writable and no sudo"
    SUDO=(sudo)
fi
# put SRC DESTDIR: atomic replace (rename), as scripts/install.sh does.
put() {
    local dest
    dest="$2/$(basename "$1")"
    "${SUDO[@]}" install -m 0644 "$1" "$dest.tmp.$$" && "${SUDO[@]}" mv -f "$dest.tmp.$$" "$dest"
}
# install_stage STAGE: the library, control file and scripts of a `cargo pgrx package` tree.
install_stage() {
    local f
    put "$1$B_LIBDIR/pg_audience.so" "$LIBDIR" || return
    for f in "$1$B_EXTDIR"/pg_audience.control "$1$B_EXTDIR"/pg_audience--*.sql; do
        put "$f" "$EXTDIR" || return
    done
}

# What is installed now is put back at exit: files we replaced get their old contents, files we
# added are removed; the current release is installed when there was none.
BACKUP="$T_TMP/installed-before"
mkdir -p "$BACKUP/lib" "$BACKUP/ext"
if [[ -f "$LIBDIR/pg_audience.so" ]]; then cp -a "$LIBDIR/pg_audience.so" "$BACKUP/lib/"; fi
for f in "$EXTDIR"/pg_audience.control "$EXTDIR"/pg_audience--*.sql; do
    if [[ -f "$f" ]]; then cp -a "$f" "$BACKUP/ext/"; fi
done
restore_installed() {
    local f
    for f in "$EXTDIR"/pg_audience--*.sql; do
        if [[ -f "$f" && ! -f "$BACKUP/ext/$(basename "$f")" ]]; then "${SUDO[@]}" rm -f "$f"; fi
    done
    for f in "$BACKUP/lib"/* "$BACKUP/ext"/*; do
        [[ -f "$f" ]] || continue
        if [[ "$f" == "$BACKUP/lib/"* ]]; then put "$f" "$LIBDIR"; else put "$f" "$EXTDIR"; fi
    done
    if [[ ! -f "$BACKUP/lib/pg_audience.so" && -d "$NEW_STAGE" ]]; then
        install_stage "$NEW_STAGE"
    fi
    echo "(restored the pg_audience files installed before the test in $LIBDIR, $EXTDIR)" >&2
}
pga_on_exit restore_installed

# ------------------------------------------------------------------ the current release
# The staged package of the current build, if it is complete and newer than the sources.
stage_current() {
    local so="$NEW_STAGE$B_LIBDIR/pg_audience.so" f
    [[ -f "$so" && -f "$NEW_STAGE$B_EXTDIR/pg_audience--$NEW_VERSION.sql" ]] || return 1
    grep -q "^default_version = '$NEW_VERSION'" "$NEW_STAGE$B_EXTDIR/pg_audience.control" || return 1
    for f in sql/pg_audience--*--*.sql; do
        cmp -s "$f" "$NEW_STAGE$B_EXTDIR/$(basename "$f")" || return 1
    done
    [[ -z "$(find src sql Cargo.toml Cargo.lock pg_audience.control -newer "$so" -print -quit)" ]]
}
if stage_current; then
    t_say "current release: reusing the staged package $NEW_STAGE"
else
    t_say "current release: cargo pgrx package (the staged package is missing or older than the sources)"
    rm -rf "$NEW_STAGE"
    cargo pgrx package --pg-config "$BUILD_PGC" >"$T_TMP/build-new.log" 2>&1 ||
        { tail -n 40 "$T_TMP/build-new.log" >&2; t_die "building the current release failed"; }
fi
for f in "$NEW_STAGE$B_LIBDIR/pg_audience.so" "$NEW_STAGE$B_EXTDIR/pg_audience--$NEW_VERSION.sql" \
    "${CHAIN[@]/#/$NEW_STAGE$B_EXTDIR/}"; do
    t_check "the package of $NEW_VERSION has $(basename "$f") (cargo pgrx package ships sql/pg_audience--*--*.sql)" test -f "$f"
done

# ------------------------------------------------------------------ build 0.1.0
t_say "build $OLD_VERSION from ${OLD_COMMIT:0:7}"
t0="$(t_now)"
# The sources of 0.1.0: from its commit when the clone has it, else from the copy kept in the
# repository (tests/upgrade/, made with `git archive` of that commit), so a shallow clone works.
OLD_TARBALL="tests/upgrade/pg_audience-$OLD_VERSION-src.tar.gz"
if [[ "$(cat "$OLD_SRC/.pga-commit" 2>/dev/null)" != "$OLD_COMMIT" ]]; then
    rm -rf "$OLD_SRC"
    mkdir -p "$OLD_SRC"
    if git cat-file -e "$OLD_COMMIT^{commit}" 2>/dev/null; then
        git archive "$OLD_COMMIT" | tar -x -C "$OLD_SRC"
    elif [[ -f "$OLD_TARBALL" ]]; then
        t_meas "commit ${OLD_COMMIT:0:7} is not in this clone (shallow?): using $OLD_TARBALL"
        tar -xzf "$OLD_TARBALL" -C "$OLD_SRC"
    else
        t_die "neither commit $OLD_COMMIT ($OLD_VERSION) nor $OLD_TARBALL is available"
    fi
    echo "$OLD_COMMIT" >"$OLD_SRC/.pga-commit"
fi
if [[ ! -d "$OLD_TARGET/release" && -d "$TARGET/release" ]]; then
    # Compiled dependencies of the current build (same versions and profile): only the crate and
    # the pgrx schema generator are compiled again.
    mkdir -p "$OLD_TARGET"
    cp -a --reflink=auto "$TARGET/release" "$OLD_TARGET/"
fi
rm -rf "$OLD_STAGE"
(cd "$OLD_SRC" && CARGO_TARGET_DIR="$OLD_TARGET" cargo pgrx package --pg-config "$BUILD_PGC") >"$T_TMP/build-old.log" 2>&1 ||
    { tail -n 40 "$T_TMP/build-old.log" >&2; t_die "building $OLD_VERSION failed (log: $T_TMP/build-old.log)"; }
OLD_BUILD_MS="$(t_ms "$t0" "$(t_now)")"
t_meas "build of $OLD_VERSION: $((OLD_BUILD_MS / 1000)) s"
t_check "the package of $OLD_VERSION has pg_audience--$OLD_VERSION.sql" test -f "$OLD_STAGE$B_EXTDIR/pg_audience--$OLD_VERSION.sql"

# ------------------------------------------------------------------ 0.1.0 with data
t_say "install $OLD_VERSION, fresh cluster, CREATE EXTENSION pg_audience VERSION '$OLD_VERSION'"
install_stage "$OLD_STAGE" || t_die "installing $OLD_VERSION failed"
CL=t-upgrade
pga_cluster_fresh "$CL" >&2
T_LOG="$(pga_cluster_log "$CL")"
DB=postgres
q "CREATE EXTENSION pg_audience VERSION '$OLD_VERSION'"
t_eq "extension installed at $OLD_VERSION" "$(q "SELECT extversion FROM pg_extension WHERE extname = 'pg_audience'") $(q "SELECT audience.version()")" "$OLD_VERSION $OLD_VERSION"

q "SET client_min_messages = warning" "SELECT count(*) FROM audience.generate_demo_shop('demo', 3000, 300, 60000)" >/dev/null
t_register_shop shop demo
q "SELECT audience.create_catalog('side', is_default => false, description => 'no model')" \
  "SELECT audience.add_event('side', 'demo.wishlist_saves', 'sku', event_time => 'saved_at', weight => 2, name => 'saves')" \
  "SELECT audience.map_property('side', 'brand', column_name => 'brand', products => 'demo.products')" >/dev/null
q "SELECT model_id FROM audience.build('shop', factors => 16, neighbours => 30)" >/dev/null
q "SET client_min_messages = warning" \
  "SELECT * FROM audience.save_audience('nike_top', 'brand', 'Nike', 5, catalog => 'shop')" \
  "SELECT * FROM audience.save_audience('apple_new', 'brand', ARRAY['Apple', 'Beats'], 10, catalog => 'shop', exclude_engaged => true)" >/dev/null
# A rebuild with other (remembered) settings changes the audiences: history gets entered/left rows.
q "SELECT model_id FROM audience.build('shop', factors => 8, prior => 5)" >/dev/null
q "SET client_min_messages = warning" "SELECT * FROM audience.refresh_all_audiences()" >/dev/null
# A privilege changed on a function the update recreates: the update says it is reset.
q "REVOKE EXECUTE ON FUNCTION audience.tune(text, text, interval) FROM PUBLIC"
t_meas "$OLD_VERSION data: $(q "SELECT (SELECT count(*) FROM audience.catalogs) || ' catalogs, ' || (SELECT count(*) FROM audience.events) || ' events, ' || (SELECT count(*) FROM audience.property_mappings) || ' mappings, ' || (SELECT count(*) FROM audience.models) || ' model(s), ' || (SELECT count(*) FROM audience.saved_audiences) || ' saved audiences, ' || (SELECT count(*) FROM audience.audience_members) || ' members, ' || (SELECT count(*) FROM audience.audience_changes) || ' change rows'")"
t_eq "the $OLD_VERSION history has both kinds of change" "$(q "SELECT count(DISTINCT change) FROM audience.audience_changes")" 2

# Every table of the old schema with its old columns, and every sequence: compared after the update.
mapfile -t OLD_TABLES < <(q "SELECT c.relname || '|' || string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum)
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE c.relnamespace = 'audience'::regnamespace AND c.relkind IN ('r', 'p') GROUP BY c.relname ORDER BY c.relname")
mapfile -t OLD_SEQS < <(q "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'audience'::regnamespace AND c.relkind = 'S' ORDER BY 1")
state() {
    local line t cols s
    for line in "${OLD_TABLES[@]}"; do
        t="${line%%|*}"
        cols="${line#*|}"
        q "SELECT 'table $t: ' || count(*) || ' rows, md5 ' || coalesce(md5(string_agg(r::text, E'\n' ORDER BY r::text)), '-') FROM (SELECT $cols FROM audience.$t) r"
    done
    for s in "${OLD_SEQS[@]}"; do
        q "SELECT 'sequence $s: ' || last_value || ' ' || is_called FROM audience.$s"
    done
}
state >"$T_TMP/state-before.txt"
sed 's/^/      before: /' "$T_TMP/state-before.txt"
OLD_MODEL="$(q "SELECT active_model_id FROM audience.catalogs WHERE name = 'shop'")"

# ------------------------------------------------------------------ update
t_say "install $NEW_VERSION, restart, ALTER EXTENSION pg_audience UPDATE"
install_stage "$NEW_STAGE" || t_die "installing $NEW_VERSION failed"
pga_cluster_stop "$CL" >&2
pga_cluster_start "$CL" >&2
t_eq "update path $OLD_VERSION -> $NEW_VERSION" \
    "$(q "SELECT path FROM pg_extension_update_paths('pg_audience') WHERE source = '$OLD_VERSION' AND target = '$NEW_VERSION'")" \
    "$UPDATE_PATH"
rc=0
out="$(pga_psql "$CL" -d "$DB" -Atq -v VERBOSITY=verbose -c "ALTER EXTENSION pg_audience UPDATE" 2>&1)" || rc=$?
printf '%s\n' "$out" | sed 's/^/      /'
t_eq "ALTER EXTENSION pg_audience UPDATE succeeds" "$rc" 0
t_eq "extversion and audience.version() after the update" \
    "$(q "SELECT extversion FROM pg_extension WHERE extname = 'pg_audience'") $(q "SELECT audience.version()")" "$NEW_VERSION $NEW_VERSION"
t_check "the update warns that catalog shop must be rebuilt (and not catalog side, which has no model)" \
    grep -q "WARNING: .*rebuild the model of catalog(s) 'shop'\$" <<<"$out"
t_check "the warning's hint names audience.build" grep -q "HINT: .*audience.build(" <<<"$out"
t_check "the update warns that tune (REVOKEd from PUBLIC) is recreated with the default privileges" \
    grep -q "WARNING: .*recreates audience.tune(catalog text, property text, holdout interval) with the default privileges" <<<"$out"

state >"$T_TMP/state-after.txt"
if diff -u "$T_TMP/state-before.txt" "$T_TMP/state-after.txt" >"$T_TMP/state.diff"; then
    t_pass "every row of the $OLD_VERSION tables (${#OLD_TABLES[@]}: catalogs, events, mappings, models, saved audiences, members, changes ...) and every sequence is unchanged"
else
    t_fail "the update changed rows of the $OLD_VERSION tables:"
    sed 's/^/      /' "$T_TMP/state.diff"
fi

t_say "the $OLD_VERSION model before a rebuild"
err="$(pga_psql "$CL" -d "$DB" -Atq -v VERBOSITY=verbose -c "SELECT count(*) FROM audience.recommend_audience('brand', 'Nike', 5, catalog => 'shop')" 2>&1 || true)"
printf '%s\n' "$err" | sed 's/^/      /'
t_eq "recommend_audience on the $OLD_VERSION model: 55000 and what to do" "$(t_sqlstate_of <<<"$err")" \
    $'55000\tthe model of catalog "shop" was built by an earlier version of pg_audience and must be rebuilt'
t_check "its hint names audience.build('shop')" grep -qF "HINT:  Rebuild it with SELECT * FROM audience.build('shop');" <<<"$err"
t_eq "refresh_audience on the $OLD_VERSION model fails the same way" \
    "$(q_err "SET client_min_messages = warning" "SELECT * FROM audience.refresh_audience('nike_top')" | cut -f1)" 55000
t_eq "the failed refresh kept the members" "$(q "SELECT count(*) FROM audience.audience_members")" \
    "$(grep '^table audience_members:' "$T_TMP/state-before.txt" | sed -E 's/^[^:]*: ([0-9]+) rows.*/\1/')"

t_say "rebuild, audiences, saved audiences"
b="$(q "SELECT model_id || ' ' || rows_read FROM audience.build('shop')" 2>&1)" || t_fail "build after the update failed: $b"
t_meas "build after the update -> model/rows_read $b"
t_check "the rebuilt model replaces the $OLD_VERSION one (id ${b%% *} > $OLD_MODEL)" test "${b%% *}" -gt "$OLD_MODEL"
t_eq "the rebuild kept the remembered build settings" \
    "$(q "SELECT build_settings->>'factors' FROM audience.catalogs WHERE name = 'shop'")" 8
t_eq "one model remains" "$(q "SELECT count(*) FROM audience.models")" 1
n="$(q "SELECT count(*) FROM audience.recommend_audience('brand', 'Nike', 5, catalog => 'shop')" 2>&1)" || t_fail "recommend_audience after the rebuild: $n"
t_check "recommend_audience works after the rebuild ($n users)" test "${n:-0}" -gt 0
ref="$(q "SET client_min_messages = warning" "SELECT audience || ' ' || members || ' ' || entered || ' ' || \"left\" FROM audience.refresh_all_audiences() ORDER BY 1" 2>&1)" ||
    t_fail "refresh_all_audiences after the rebuild: $ref"
t_meas "refresh after the rebuild (audience members entered left): $(tr '\n' ';' <<<"$ref")"
t_eq "both saved audiences refreshed" "$(wc -l <<<"$ref")" 2
t_eq "the refreshed nike_top has the audience's users" \
    "$(q "SELECT count(*) FROM audience.audience_members m JOIN audience.saved_audiences s USING (audience_id) WHERE s.name = 'nike_top'")" "$n"
t_check "the change log kept its $OLD_VERSION rows and grew" \
    test "$(q "SELECT count(*) FROM audience.audience_changes")" -ge \
    "$(grep '^table audience_changes:' "$T_TMP/state-before.txt" | sed -E 's/^[^:]*: ([0-9]+) rows.*/\1/')"
sa="$(q "SET client_min_messages = warning" "SELECT members FROM audience.save_audience('third', 'brand', 'Sony', 5, catalog => 'shop')" 2>&1)" ||
    t_fail "save_audience after the update: $sa"
t_check "save_audience of a new audience works ($sa members)" test "${sa:-0}" -gt 0
t_eq "$OLD_VERSION registrations count as made by the role that ran the update, erasable (tables it may DELETE from)" \
    "$(q "SELECT string_agg(DISTINCT registered_by || ' ' || erasable, ', ') FROM audience.events")" "postgres true"
q "INSERT INTO demo.tracks (user_id, event, product_id, properties, \"timestamp\")
   SELECT user_id, event, product_id, properties, \"timestamp\" + interval '1 day' FROM demo.tracks ORDER BY \"timestamp\" DESC LIMIT 10" >/dev/null
inc="$(q "SET client_min_messages = warning" "SELECT new_rows FROM audience.build_incremental('shop')" 2>&1)" ||
    t_fail "build_incremental after the update's rebuild: $inc"
t_eq "build_incremental grows the rebuilt model by the 10 new events" "$inc" 10
u="$(q "SELECT user_id FROM audience.audience_members ORDER BY user_id LIMIT 1")"
fu="$(q "SET client_min_messages = warning" "SELECT count(*) FILTER (WHERE status <> 'deleted') || ' ' || count(*) FROM audience.forget_user('$u', rebuild => false)" 2>&1)" ||
    t_fail "forget_user after the update: $fu"
t_eq "forget_user('$u') deletes from every $OLD_VERSION source (rows not 'deleted', rows)" "${fu% *}" 0
t_eq "after forget_user, build_incremental asks for a full build (55000)" \
    "$(q_err "SET client_min_messages = warning" "SELECT * FROM audience.build_incremental('shop')" | cut -f1)" 55000
t_eq "user $u is gone from the sources and the saved audiences" \
    "$(q "SELECT (SELECT count(*) FROM demo.tracks WHERE user_id::text = '$u') + (SELECT count(*) FROM demo.wishlist_saves WHERE user_id::text = '$u') + (SELECT count(*) FROM audience.audience_members WHERE user_id = '$u')")" 0

# ------------------------------------------------------------------ schema: updated == fresh
t_say "schema of the updated database vs a fresh CREATE EXTENSION of $NEW_VERSION"
q "CREATE DATABASE fresh"
DB=fresh q "CREATE EXTENSION pg_audience"
describe_sql="
WITH ext AS (SELECT e.* FROM pg_extension e WHERE e.extname = 'pg_audience'),
nsp AS (SELECT 'audience'::regnamespace AS oid),
rel AS (SELECT c.* FROM pg_class c, nsp WHERE c.relnamespace = nsp.oid),
fn AS (SELECT p.*, p.oid::regprocedure::text AS sig FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid),
lines(l) AS (
  SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
    FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
  UNION ALL SELECT 'extension schema=' || (ext.extnamespace::regnamespace)::text || ' relocatable=' || ext.extrelocatable
    || ' config=' || coalesce((SELECT string_agg(x.c::regclass::text || '(' || coalesce(ext.extcondition[x.i], '') || ')', ', ' ORDER BY x.c::regclass::text)
                               FROM unnest(ext.extconfig) WITH ORDINALITY AS x(c, i)), '-') FROM ext
  UNION ALL SELECT 'schema ' || n.nspname || ' owner=' || (n.nspowner::regrole)::text || ' acl=' || coalesce(n.nspacl::text, '-')
    || ' comment=' || coalesce(obj_description(n.oid, 'pg_namespace'), '-') FROM pg_namespace n, nsp WHERE n.oid = nsp.oid
  UNION ALL SELECT 'function ' || sig || ' | kind=' || (prokind)::text || ' lang=' || (SELECT lanname FROM pg_language WHERE oid = prolang)
    || ' volatile=' || (provolatile)::text || ' parallel=' || (proparallel)::text || ' strict=' || proisstrict || ' secdef=' || prosecdef
    || ' leakproof=' || proleakproof || ' cost=' || procost || ' rows=' || prorows || ' owner=' || (proowner::regrole)::text FROM fn
  UNION ALL SELECT 'function ' || sig || ' | arguments: ' || pg_get_function_arguments(oid) FROM fn
  UNION ALL SELECT 'function ' || sig || ' | result: ' || coalesce(pg_get_function_result(oid), '-') FROM fn
  UNION ALL SELECT 'function ' || sig || ' | config=' || coalesce(proconfig::text, '-') || ' acl=' || coalesce(proacl::text, '-') FROM fn
  UNION ALL SELECT 'function ' || sig || ' | body: ' || CASE WHEN probin IS NOT NULL THEN 'C ' || probin || ' ' || prosrc ELSE 'md5 ' || md5(prosrc) || ' (' || length(prosrc) || ' chars)' END FROM fn
  UNION ALL SELECT 'function ' || sig || ' | comment: ' || coalesce(obj_description(oid, 'pg_proc'), '-') FROM fn
  UNION ALL SELECT 'aggregate ' || (a.aggfnoid::regprocedure)::text || ' | kind=' || (a.aggkind)::text || ' sfunc=' || (a.aggtransfn::regproc)::text
    || ' stype=' || (a.aggtranstype::regtype)::text || ' sspace=' || a.aggtransspace || ' final=' || (a.aggfinalfn::regproc)::text || ' extra=' || a.aggfinalextra
    || ' modify=' || (a.aggfinalmodify)::text || ' combine=' || (a.aggcombinefn::regproc)::text || ' serial=' || (a.aggserialfn::regproc)::text
    || ' deserial=' || (a.aggdeserialfn::regproc)::text || ' msfunc=' || (a.aggmtransfn::regproc)::text || ' minv=' || (a.aggminvtransfn::regproc)::text
    || ' mfinal=' || (a.aggmfinalfn::regproc)::text || ' mstype=' || (a.aggmtranstype::regtype)::text || ' sortop=' || (a.aggsortop::regoper)::text
    || ' init=' || coalesce(a.agginitval, '-') || ' minit=' || coalesce(a.aggminitval, '-')
    FROM pg_aggregate a JOIN fn ON fn.oid = a.aggfnoid
  UNION ALL SELECT 'relation ' || relname || ' | kind=' || (relkind)::text || ' persistence=' || (relpersistence)::text || ' owner=' || (relowner::regrole)::text
    || ' options=' || coalesce(reloptions::text, '-') || ' rls=' || relrowsecurity || '/' || relforcerowsecurity
    || ' acl=' || coalesce(relacl::text, '-') || ' comment=' || coalesce(obj_description(oid, 'pg_class'), '-') FROM rel
  UNION ALL SELECT 'relation ' || c.relname || ' | columns: ' || string_agg(a.attname, ', ' ORDER BY a.attnum)
    FROM rel c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped GROUP BY c.relname
  UNION ALL SELECT 'column ' || c.relname || '.' || a.attname || ' | ' || format_type(a.atttypid, a.atttypmod)
    || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END || ' default=' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-')
    || ' identity=' || (a.attidentity)::text || ' generated=' || (a.attgenerated)::text || ' storage=' || (a.attstorage)::text
    || ' collation=' || coalesce(NULLIF(a.attcollation, t.typcollation)::regcollation::text, 'default')
    || ' acl=' || coalesce(a.attacl::text, '-') || ' comment=' || coalesce(col_description(c.oid, a.attnum), '-')
    FROM rel c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
  UNION ALL SELECT 'view ' || relname || ' | ' || regexp_replace(pg_get_viewdef(oid), '\s+', ' ', 'g') FROM rel WHERE relkind IN ('v', 'm')
  UNION ALL SELECT 'constraint ' || c.relname || '.' || k.conname || ' | ' || pg_get_constraintdef(k.oid)
    || ' comment=' || coalesce(obj_description(k.oid, 'pg_constraint'), '-') FROM pg_constraint k JOIN rel c ON c.oid = k.conrelid
  UNION ALL SELECT 'index ' || i.relname || ' | ' || pg_get_indexdef(i.oid) || ' comment=' || coalesce(obj_description(i.oid, 'pg_class'), '-')
    FROM pg_index x JOIN rel i ON i.oid = x.indexrelid
  UNION ALL SELECT 'trigger ' || c.relname || '.' || g.tgname || ' | ' || pg_get_triggerdef(g.oid) || ' enabled=' || (g.tgenabled)::text
    FROM pg_trigger g JOIN rel c ON c.oid = g.tgrelid WHERE NOT g.tgisinternal
  UNION ALL SELECT 'rule ' || c.relname || '.' || r.rulename || ' | ' || pg_get_ruledef(r.oid)
    FROM pg_rewrite r JOIN rel c ON c.oid = r.ev_class WHERE r.rulename <> '_RETURN'
  UNION ALL SELECT 'policy ' || c.relname || '.' || p.polname || ' | cmd=' || (p.polcmd)::text || ' permissive=' || p.polpermissive
    || ' roles=' || p.polroles::regrole[]::text || ' using=' || coalesce(pg_get_expr(p.polqual, p.polrelid), '-')
    || ' check=' || coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '-') FROM pg_policy p JOIN rel c ON c.oid = p.polrelid
  UNION ALL SELECT 'sequence ' || c.relname || ' | type=' || (s.seqtypid::regtype)::text || ' start=' || s.seqstart || ' inc=' || s.seqincrement
    || ' min=' || s.seqmin || ' max=' || s.seqmax || ' cache=' || s.seqcache || ' cycle=' || s.seqcycle
    || ' owned_by=' || coalesce((SELECT d.refobjid::regclass || '.' || a.attname FROM pg_depend d
        JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i') LIMIT 1), '-')
    FROM pg_sequence s JOIN rel c ON c.oid = s.seqrelid
  UNION ALL SELECT 'type ' || t.typname || ' | type=' || (t.typtype)::text || ' base=' || (t.typbasetype::regtype)::text || ' notnull=' || t.typnotnull
    || ' labels=' || coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid), '-')
    || ' checks=' || coalesce((SELECT string_agg(pg_get_constraintdef(k.oid), ' AND ' ORDER BY k.conname) FROM pg_constraint k WHERE k.contypid = t.oid), '-')
    || ' comment=' || coalesce(obj_description(t.oid, 'pg_type'), '-')
    FROM pg_type t, nsp WHERE t.typnamespace = nsp.oid AND t.typcategory <> 'A'
     AND (t.typtype IN ('b', 'd', 'e', 'r', 'm') OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
)
SELECT l FROM lines ORDER BY l COLLATE \"C\""
DB=fresh q "$describe_sql" >"$T_TMP/schema-fresh.txt"
q "$describe_sql" >"$T_TMP/schema-updated.txt"
t_meas "schema description: $(wc -l <"$T_TMP/schema-fresh.txt") lines ($(grep -c '^member ' "$T_TMP/schema-fresh.txt") extension members)"
if diff -u --label "fresh CREATE EXTENSION $NEW_VERSION" --label "updated from $OLD_VERSION" \
    "$T_TMP/schema-fresh.txt" "$T_TMP/schema-updated.txt" >"$T_TMP/schema.diff"; then
    t_pass "the updated schema equals a fresh install of $NEW_VERSION"
else
    t_fail "the updated schema differs from a fresh install of $NEW_VERSION (extend $LATEST_SCRIPT); diff:"
    sed 's/^/      /' "$T_TMP/schema.diff"
fi

t_check_server_log
t_meas "total: $(($(t_ms "$T_START" "$(t_now)") / 1000)) s (build of $OLD_VERSION $((OLD_BUILD_MS / 1000)) s)"
t_finish
