//! The classification table (SQL → class and reason) and the tests for
//! session effects, hints, and hostile input.

use std::collections::HashSet;

use super::Class::{Read, Write};
use super::Reason as R;
use super::SessionEffect as E;
use super::*;

/// User-defined VOLATILE functions, as the caller would load them.
fn volatile() -> HashSet<String> {
    ["audit", "public.audit", "bump_counter", "app.bump_counter"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

macro_rules! is {
    ($p:pat $(if $guard:expr)?) => {
        (|r: &Reason| matches!(r, $p $(if $guard)?)) as fn(&Reason) -> bool
    };
}

type Row = (&'static str, Class, fn(&Reason) -> bool);

#[rustfmt::skip]
const TABLE: &[Row] = &[
    // --- Plain reads.
    ("SELECT 1", Read, is!(R::Select)),
    ("select 1;", Read, is!(R::Select)),
    ("  SeLeCt   *  FrOm   T  wHeRe   ID=$1  ", Read, is!(R::Select)),
    ("VALUES (1, 'a'), (2, 'b')", Read, is!(R::Values)),
    ("TABLE pgbench_branches", Read, is!(R::Table)),
    ("table public.t", Read, is!(R::Table)),
    ("(SELECT 1)", Read, is!(R::Select)),
    ("SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3", Read, is!(R::Select)),
    ("SHOW search_path", Read, is!(R::Show)),
    ("SHOW ALL", Read, is!(R::Show)),
    ("SHOW TRANSACTION ISOLATION LEVEL", Read, is!(R::Show)),
    ("show palisade.pin", Read, is!(R::Show)),
    ("SELECT pg_sleep(0.1)", Read, is!(R::Select)),
    ("SELECT now(), current_user, version()", Read, is!(R::Select)),
    ("SELECT pg_catalog.pg_is_in_recovery(), inet_server_port()", Read, is!(R::Select)),
    ("SELECT * FROM generate_series(1, 10) AS g(i)", Read, is!(R::Select)),
    ("SELECT * FROM unnest($1::int[]) AS u(id)", Read, is!(R::Select)),
    ("SELECT count(*) FILTER (WHERE a > 1) FROM t GROUP BY ROLLUP (b)", Read, is!(R::Select)),
    ("SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b DESC", Read, is!(R::Select)),
    ("SELECT * FROM t TABLESAMPLE SYSTEM (10)", Read, is!(R::Select)),
    ("SELECT * FROM t FETCH FIRST 5 ROWS ONLY", Read, is!(R::Select)),
    ("SELECT x FROM t WHERE a IS DISTINCT FROM b", Read, is!(R::Select)),
    ("SELECT E'\\n', U&'d\\0061t', 'it''s'", Read, is!(R::Select)),
    ("SELECT * FROM t WHERE ts AT TIME ZONE 'UTC' > now() - interval '1 day'", Read, is!(R::Select)),
    ("SELECT ARRAY[1, 2], $1::int, EXISTS (SELECT 1 FROM u)", Read, is!(R::Select)),
    ("SELECT a FROM t WHERE b LIKE 'x%' ESCAPE '\\'", Read, is!(R::Select)),
    ("SELECT format('%s', 1), coalesce(a, 0), lower(b) FROM t", Read, is!(R::Select)),
    ("SELECT 1 AS \"for\", 2 AS \"update\"", Read, is!(R::Select)),
    ("SELECT key, share FROM t WHERE for_x = 1", Read, is!(R::Select)),
    // --- pgbench's own statements.
    ("SELECT abalance FROM pgbench_accounts WHERE aid = $1", Read, is!(R::Select)),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 42;", Read, is!(R::Select)),
    ("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", Write, is!(R::Dml)),
    ("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2", Write, is!(R::Dml)),
    ("UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2", Write, is!(R::Dml)),
    ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)", Write, is!(R::Dml)),
    ("truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers", Write, is!(R::Dml)),
    ("create table pgbench_history(tid int,bid int,aid    int,delta int,mtime timestamp,filler char(22))", Write, is!(R::Ddl)),
    ("alter table pgbench_branches add primary key (bid)", Write, is!(R::Ddl)),
    ("select o.n, p.partstrat, pg_catalog.count(i.inhparent) from pg_catalog.pg_class as c join pg_catalog.pg_namespace as n on (n.oid = c.relnamespace) cross join lateral (select pg_catalog.array_position(pg_catalog.current_schemas(true), n.nspname)) as o(n) left join pg_catalog.pg_partitioned_table as p on (p.partrelid = c.oid) left join pg_catalog.pg_inherits as i on (c.oid = i.inhparent) where c.relname = 'pgbench_accounts' and o.n is not null group by 1, 2 order by 1 asc limit 1", Read, is!(R::Select)),
    // pgbench -i: sqlparser 0.63 cannot parse COPY's `(freeze on)` nor `VACUUM ANALYZE t`.
    ("copy pgbench_accounts from stdin with (freeze on)", Write, is!(R::Unparsable)),
    ("vacuum analyze pgbench_branches", Write, is!(R::Unparsable)),
    // --- ORM-style statements.
    ("SELECT \"users\".* FROM \"users\" WHERE \"users\".\"id\" = $1 LIMIT $2", Read, is!(R::Select)),
    ("SELECT \"User\".\"id\", \"User\".\"email\" FROM \"public\".\"User\" WHERE \"User\".\"email\" = $1 LIMIT $2 OFFSET $3", Read, is!(R::Select)),
    ("SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.status = ANY($1) AND c.email ILIKE $2 AND o.meta->>'channel' = $3 ORDER BY o.created_at DESC LIMIT 20 OFFSET $4", Read, is!(R::Select)),
    ("SELECT data #>> '{a,b}', data @> '{\"a\":1}', data ? 'k', data->'x'->>'y' FROM t", Read, is!(R::Select)),
    ("SELECT id, row_number() OVER (PARTITION BY a ORDER BY b) AS rn FROM t", Read, is!(R::Select)),
    ("SELECT sum(a) OVER w FROM t WINDOW w AS (PARTITION BY b ORDER BY c ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)", Read, is!(R::Select)),
    ("SELECT COUNT(*) AS \"__count\" FROM \"app_item\" WHERE \"app_item\".\"created\" >= $1::timestamptz", Read, is!(R::Select)),
    ("SELECT t.* FROM t JOIN LATERAL (SELECT * FROM u WHERE u.t = t.id LIMIT 1) x ON true", Read, is!(R::Select)),
    ("SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname OPERATOR(pg_catalog.~) '^(t)$' COLLATE pg_catalog.default AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3", Read, is!(R::Select)),
    ("INSERT INTO \"users\" (\"email\", \"created_at\") VALUES ($1, $2) RETURNING \"id\"", Write, is!(R::Dml)),
    ("INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET b = excluded.b RETURNING id", Write, is!(R::Dml)),
    ("UPDATE \"users\" SET \"name\" = $1 WHERE \"users\".\"id\" = $2", Write, is!(R::Dml)),
    ("DELETE FROM \"sessions\" WHERE \"expires_at\" < now()", Write, is!(R::Dml)),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a WHEN NOT MATCHED THEN INSERT (id, a) VALUES (s.id, s.a)", Write, is!(R::Dml)),
    // --- CTEs.
    ("WITH x AS (SELECT 1) SELECT * FROM x", Read, is!(R::Select)),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r", Read, is!(R::Select)),
    ("WITH a AS MATERIALIZED (SELECT 1), b AS NOT MATERIALIZED (SELECT 2) SELECT * FROM a, b", Read, is!(R::Select)),
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", Write, is!(R::WritableCte)),
    ("WITH x AS (INSERT INTO log VALUES (1) RETURNING id) SELECT id FROM x", Write, is!(R::WritableCte)),
    ("WITH a AS (SELECT 1), b AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM a, b", Write, is!(R::WritableCte)),
    ("WITH a AS (WITH b AS (DELETE FROM t RETURNING *) SELECT * FROM b) SELECT * FROM a", Write, is!(R::WritableCte)),
    ("SELECT * FROM (WITH x AS (UPDATE t SET a = 1 RETURNING a) SELECT a FROM x) s", Write, is!(R::WritableCte)),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", Write, is!(R::Dml)),
    ("WITH x AS (SELECT id FROM t) UPDATE u SET a = 1 FROM x WHERE u.id = x.id", Write, is!(R::Dml)),
    ("WITH x AS (SELECT id FROM t) DELETE FROM u USING x WHERE u.id = x.id", Write, is!(R::Dml)),
    // --- Locking clauses, anywhere.
    ("SELECT * FROM t WHERE id = $1 FOR UPDATE", Write, is!(R::Locking)),
    ("SELECT * FROM t FOR SHARE", Write, is!(R::Locking)),
    ("select * from t for update nowait", Write, is!(R::Locking)),
    ("SELECT * FROM t WHERE a = 1 FOR UPDATE OF t NOWAIT", Write, is!(R::Locking)),
    ("SELECT * FROM jobs WHERE state = 'new' ORDER BY id LIMIT 10 FOR UPDATE SKIP LOCKED", Write, is!(R::Locking)),
    ("SELECT * FROM jobs FOR UPDATE SKIP LOCKED LIMIT 1", Write, is!(R::Locking)),
    ("SELECT * FROM t FOR NO KEY UPDATE", Write, is!(R::Locking)),
    ("SELECT * FROM t WHERE id = $1 FOR NO KEY UPDATE SKIP LOCKED LIMIT 1", Write, is!(R::Locking)),
    ("SELECT * FROM t FOR KEY SHARE", Write, is!(R::Locking)),
    ("SELECT * FROM t WHERE a = $1 FOR KEY SHARE OF t", Write, is!(R::Locking)),
    ("SELECT * FROM t FOR UPDATE OF t FOR SHARE OF u", Write, is!(R::Locking)),
    ("SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)", Write, is!(R::Locking)),
    ("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id FOR SHARE)", Write, is!(R::Locking)),
    ("SELECT * FROM (SELECT * FROM t FOR UPDATE) s", Write, is!(R::Locking)),
    ("WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x", Write, is!(R::Locking)),
    ("WITH x AS (SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED) SELECT * FROM x", Write, is!(R::Locking)),
    ("(SELECT 1 FROM t FOR UPDATE)", Write, is!(R::Locking)),
    ("SELECT 1 FROM t UNION SELECT 2 FROM (SELECT 1 FROM u FOR SHARE) s", Write, is!(R::Locking)),
    // --- SELECT INTO.
    ("SELECT * INTO new_t FROM t", Write, is!(R::SelectInto)),
    ("SELECT a, b INTO TEMP tmp FROM t WHERE a > 1", Write, is!(R::SelectInto)),
    ("SELECT * INTO UNLOGGED TABLE u FROM t", Write, is!(R::SelectInto)),
    // --- Side-effect built-ins, anywhere in the statement.
    ("SELECT nextval('s')", Write, is!(R::SideEffectFunction(f) if f == "nextval")),
    ("SELECT NEXTVAL('s')", Write, is!(R::SideEffectFunction(f) if f == "nextval")),
    ("SELECT pg_catalog.nextval('s')", Write, is!(R::SideEffectFunction(f) if f == "pg_catalog.nextval")),
    ("SELECT \"nextval\"('s')", Write, is!(R::SideEffectFunction(_))),
    ("SELECT setval('s', 10)", Write, is!(R::SideEffectFunction(_))),
    ("SELECT currval('s')", Write, is!(R::SideEffectFunction(_))),
    ("SELECT lastval()", Write, is!(R::SideEffectFunction(_))),
    ("SELECT id, nextval('s') FROM t", Write, is!(R::SideEffectFunction(_))),
    ("SELECT * FROM t WHERE id = nextval('s')", Write, is!(R::SideEffectFunction(_))),
    ("SELECT * FROM t WHERE id IN (SELECT nextval('s'))", Write, is!(R::SideEffectFunction(_))),
    ("SELECT (SELECT nextval('s'))", Write, is!(R::SideEffectFunction(_))),
    ("SELECT 1 UNION SELECT nextval('s')", Write, is!(R::SideEffectFunction(_))),
    ("WITH x AS (SELECT nextval('s') AS v) SELECT v FROM x", Write, is!(R::SideEffectFunction(_))),
    ("SELECT CASE WHEN a THEN nextval('s') END FROM t", Write, is!(R::SideEffectFunction(_))),
    ("SELECT coalesce(a, nextval('s')::int) FROM t ORDER BY 1", Write, is!(R::SideEffectFunction(_))),
    ("SELECT * FROM t ORDER BY setval('s', 1)", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_advisory_lock(1)", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_try_advisory_lock(1, 2)", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_advisory_xact_lock(1)", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_try_advisory_xact_lock_shared(1)", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_advisory_unlock(1)", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_advisory_unlock_all()", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_notify('channel', 'payload')", Write, is!(R::SideEffectFunction(_))),
    // set_config() with literal arguments, alone, is given again like SET;
    // any other use is a side effect that pins (see setting_effects).
    ("SELECT set_config('search_path', 'app', false)", Write, is!(R::SessionCommand)),
    ("SELECT pg_catalog.set_config('search_path', '', false)", Write, is!(R::SessionCommand)),
    ("select Set_Config('myapp.user', 'alice', true) AS v", Write, is!(R::SessionCommand)),
    ("SELECT set_config($1, $2, false)", Write, is!(R::SideEffectFunction(_))),
    ("SELECT set_config('a.b', 'x', false) FROM t", Write, is!(R::SideEffectFunction(_))),
    ("SELECT set_config('a.b', 'x', false) WHERE false", Write, is!(R::SideEffectFunction(_))),
    ("SELECT set_config('a.b', 'x', false), 1", Write, is!(R::SideEffectFunction(_))),
    ("SELECT set_config('a.b', 'x' || 'y', false)", Write, is!(R::SideEffectFunction(_))),
    ("SELECT app.set_config('a.b', 'x', false)", Write, is!(R::SideEffectFunction(_))),
    ("SELECT upper(set_config('a.b', 'x', false))", Write, is!(R::SideEffectFunction(_))),
    ("SELECT set_config('palisade.pin', 'on', false)", Write, is!(R::SideEffectFunction(_))),
    // Views of the session's own or the node's own state.
    ("SELECT name FROM pg_prepared_statements", Write, is!(R::SessionView(v) if v == "pg_prepared_statements")),
    ("SELECT * FROM pg_catalog.pg_cursors", Write, is!(R::SessionView(v) if v == "pg_cursors")),
    ("SELECT gid FROM pg_prepared_xacts", Write, is!(R::SessionView(_))),
    ("SELECT l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation", Write, is!(R::SessionView(v) if v == "pg_locks")),
    ("SELECT count(*) FROM PG_STAT_ACTIVITY WHERE state = 'active'", Write, is!(R::SessionView(v) if v == "pg_stat_activity")),
    ("SELECT * FROM pg_stat_user_tables", Write, is!(R::SessionView(_))),
    ("SELECT * FROM pg_statio_user_indexes", Write, is!(R::SessionView(_))),
    ("SELECT * FROM pg_stat_statements", Write, is!(R::SessionView(_))),
    ("SELECT 1 WHERE EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted)", Write, is!(R::SessionView(_))),
    ("WITH a AS (SELECT pid FROM pg_stat_activity) SELECT * FROM a", Write, is!(R::SessionView(_))),
    ("SELECT * FROM pg_stat_get_activity(NULL)", Write, is!(R::SessionView(_))),
    ("SELECT pg_blocking_pids(42)", Write, is!(R::SessionView(_))),
    ("SELECT * FROM pg_prepared_statement()", Write, is!(R::SessionView(_))),
    ("SELECT * FROM pg_settings", Read, is!(R::Select)),
    ("SELECT * FROM pg_stats WHERE tablename = 't'", Read, is!(R::Select)),
    ("EXPLAIN SELECT * FROM pg_locks", Read, is!(R::Explain)),
    ("SELECT txid_current()", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_current_xact_id()", Write, is!(R::SideEffectFunction(_))),
    ("SELECT lo_import('/tmp/x')", Write, is!(R::SideEffectFunction(_))),
    ("SELECT lo_unlink(1234)", Write, is!(R::SideEffectFunction(_))),
    ("SELECT loread(0, 10)", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'x'", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_cancel_backend(123)", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_reload_conf()", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_switch_wal()", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_create_logical_replication_slot('s', 'pgoutput')", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_drop_replication_slot('s')", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_stat_reset()", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_stat_reset_shared('bgwriter')", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_replication_origin_create('o')", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_logical_emit_message(true, 'p', 'x')", Write, is!(R::SideEffectFunction(_))),
    ("SELECT pg_export_snapshot()", Write, is!(R::SideEffectFunction(_))),
    ("SELECT dblink_exec('dbname=x', 'DELETE FROM t')", Write, is!(R::SideEffectFunction(_))),
    ("SELECT * FROM dblink('dbname=x', 'SELECT 1') AS t(a int)", Write, is!(R::SideEffectFunction(f) if f == "dblink")),
    ("SELECT pg_current_wal_lsn()", Write, is!(R::PrimaryOnlyFunction(f) if f == "pg_current_wal_lsn")),
    ("SELECT pg_current_wal_insert_lsn(), pg_current_wal_flush_lsn()", Write, is!(R::PrimaryOnlyFunction(_))),
    // Not calls: a quoted column, a bare column, an alias, a string, a dollar-quoted string.
    ("SELECT \"nextval\" FROM t", Read, is!(R::Select)),
    ("SELECT nextval FROM t", Read, is!(R::Select)),
    ("SELECT t.nextval, t.\"pg_advisory_lock\" FROM t", Read, is!(R::Select)),
    ("SELECT * FROM t AS nextval", Read, is!(R::Select)),
    ("SELECT 'nextval(''s'')' AS x", Read, is!(R::Select)),
    ("SELECT $$INSERT INTO t VALUES (nextval('s'))$$ AS x", Read, is!(R::Select)),
    ("SELECT * FROM t WHERE a = 'it''s nextval(' AND b = $tag$ INSERT; DELETE $tag$", Read, is!(R::Select)),
    // --- User-defined VOLATILE functions (case-insensitive, bare or qualified).
    ("SELECT audit(1)", Write, is!(R::VolatileFunction(f) if f == "audit")),
    ("SELECT public.AUDIT(1)", Write, is!(R::VolatileFunction(f) if f == "public.audit")),
    ("SELECT \"public\".\"audit\"(1)", Write, is!(R::VolatileFunction(_))),
    ("SELECT other_schema.audit(1)", Write, is!(R::VolatileFunction(_))),
    ("SELECT app.bump_counter('x')", Write, is!(R::VolatileFunction(f) if f == "app.bump_counter")),
    ("SELECT * FROM bump_counter('x')", Write, is!(R::VolatileFunction(_))),
    ("SELECT * FROM t, LATERAL bump_counter(t.a)", Write, is!(R::VolatileFunction(_))),
    ("SELECT * FROM t WHERE a > (SELECT max(b) FROM u WHERE audit(u.id))", Write, is!(R::VolatileFunction(_))),
    ("SELECT audited(1), my_audit(2), audit_log FROM t", Read, is!(R::Select)),
    ("SELECT \"audit\" FROM t", Read, is!(R::Select)),
    // --- EXPLAIN.
    ("EXPLAIN SELECT * FROM t", Read, is!(R::Explain)),
    ("EXPLAIN INSERT INTO t VALUES (1)", Read, is!(R::Explain)),
    ("EXPLAIN (FORMAT JSON) UPDATE t SET a = 1", Read, is!(R::Explain)),
    ("EXPLAIN SELECT nextval('s')", Read, is!(R::Explain)),
    ("EXPLAIN ANALYZE SELECT * FROM t", Read, is!(R::Explain)),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t", Read, is!(R::Explain)),
    ("EXPLAIN (ANALYZE false) INSERT INTO t VALUES (1)", Read, is!(R::Explain)),
    ("EXPLAIN (ANALYZE off, COSTS off) DELETE FROM t", Read, is!(R::Explain)),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", Write, is!(R::ExplainAnalyzeWrite)),
    ("EXPLAIN (ANALYZE, BUFFERS) INSERT INTO t VALUES (1)", Write, is!(R::ExplainAnalyzeWrite)),
    ("EXPLAIN (ANALYZE on, COSTS off) DELETE FROM t", Write, is!(R::ExplainAnalyzeWrite)),
    ("EXPLAIN (ANALYZE true) UPDATE t SET a = 1", Write, is!(R::ExplainAnalyzeWrite)),
    ("EXPLAIN ANALYZE SELECT nextval('s')", Write, is!(R::ExplainAnalyzeWrite)),
    ("EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE", Write, is!(R::ExplainAnalyzeWrite)),
    ("EXPLAIN ANALYZE WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x", Write, is!(R::ExplainAnalyzeWrite)),
    ("EXPLAIN ANALYZE VERBOSE SELECT audit(1)", Write, is!(R::ExplainAnalyzeWrite)),
    // --- COPY.
    ("COPY t TO STDOUT", Read, is!(R::CopyTo)),
    ("COPY t (a, b) TO STDOUT WITH (FORMAT csv, HEADER)", Read, is!(R::CopyTo)),
    ("COPY (SELECT * FROM t WHERE a > 1) TO STDOUT", Read, is!(R::CopyTo)),
    ("COPY (SELECT nextval('s')) TO STDOUT", Write, is!(R::SideEffectFunction(_))),
    ("COPY t TO '/tmp/t.csv'", Write, is!(R::CopyTo)),
    ("COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", Write, is!(R::Dml)),
    ("COPY (WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x) TO STDOUT", Write, is!(R::WritableCte)),
    ("COPY t FROM STDIN", Write, is!(R::CopyFrom)),
    ("COPY t (a, b) FROM STDIN WITH (FORMAT csv)", Write, is!(R::CopyFrom)),
    ("COPY t FROM '/tmp/t.csv'", Write, is!(R::CopyFrom)),
    // --- Other writes.
    ("CREATE TABLE t (id serial PRIMARY KEY, a text)", Write, is!(R::Ddl)),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", Write, is!(R::Ddl)),
    ("ALTER TABLE t ADD COLUMN b int", Write, is!(R::Ddl)),
    ("DROP TABLE IF EXISTS t CASCADE", Write, is!(R::Ddl)),
    ("CREATE VIEW v AS SELECT nextval('s')", Write, is!(R::Ddl)),
    ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", Write, is!(R::Ddl)),
    ("CREATE SCHEMA app", Write, is!(R::Ddl)),
    ("CREATE SEQUENCE s", Write, is!(R::Ddl)),
    ("COMMENT ON TABLE t IS 'x'", Write, is!(R::Ddl)),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", Write, is!(R::Ddl)),
    ("GRANT SELECT ON t TO bob", Write, is!(R::Dcl)),
    ("REVOKE ALL ON t FROM bob", Write, is!(R::Dcl)),
    ("CREATE ROLE r LOGIN", Write, is!(R::Dcl)),
    ("ALTER ROLE r SET search_path = app", Write, is!(R::Dcl)),
    ("CALL process_queue(10)", Write, is!(R::Procedure)),
    ("VACUUM t", Write, is!(R::Maintenance)),
    ("ANALYZE t", Write, is!(R::Maintenance)),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", Write, is!(R::LockTable)),
    ("NOTIFY channel, 'payload'", Write, is!(R::Notify)),
    ("LOAD 'auto_explain'", Write, is!(R::Other(_))),
    ("EXECUTE q(1)", Write, is!(R::ExecutePrepared(n) if n == "q")),
    ("FETCH 10 FROM c", Write, is!(R::Cursor)),
    ("CLOSE c", Write, is!(R::Cursor)),
    // sqlparser 0.63 cannot parse these valid PostgreSQL statements: safe default.
    ("DO $$ BEGIN PERFORM 1; END $$", Write, is!(R::Unparsable)),
    ("CLUSTER t USING t_pkey", Write, is!(R::Unparsable)),
    ("REINDEX TABLE t", Write, is!(R::Unparsable)),
    ("REFRESH MATERIALIZED VIEW mv", Write, is!(R::Unparsable)),
    ("CHECKPOINT", Write, is!(R::Unparsable)),
    ("MOVE NEXT FROM c", Write, is!(R::Unparsable)),
    ("SECURITY LABEL ON TABLE t IS 'x'", Write, is!(R::Unparsable)),
    ("IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y", Write, is!(R::Unparsable)),
    ("CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$", Write, is!(R::Unparsable)),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END", Write, is!(R::Unparsable)),
    ("SELECT * FROM ROWS FROM (generate_series(1, 2), generate_series(1, 3))", Write, is!(R::Unparsable)),
    ("EXPLAIN EXPLAIN SELECT 1", Write, is!(R::Unparsable)),
    // sqlparser reads `1 FOR` as a column alias here; PostgreSQL would lock.
    ("SELECT 1 FOR UPDATE", Write, is!(R::Unparsable)),
    // --- Transactions and session commands.
    ("BEGIN", Write, is!(R::TransactionControl)),
    ("BEGIN READ ONLY", Read, is!(R::TransactionControl)),
    ("BEGIN TRANSACTION READ ONLY, READ WRITE", Write, is!(R::TransactionControl)),
    ("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", Read, is!(R::TransactionControl)),
    // Hot standbys refuse SERIALIZABLE transactions, read-only ones included.
    ("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", Write, is!(R::TransactionControl)),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", Write, is!(R::TransactionControl)),
    ("START TRANSACTION READ WRITE", Write, is!(R::TransactionControl)),
    ("COMMIT", Write, is!(R::TransactionControl)),
    ("END", Write, is!(R::TransactionControl)),
    ("ROLLBACK", Write, is!(R::TransactionControl)),
    ("ABORT", Write, is!(R::TransactionControl)),
    ("SAVEPOINT a", Write, is!(R::TransactionControl)),
    ("ROLLBACK TO SAVEPOINT a", Write, is!(R::TransactionControl)),
    ("RELEASE SAVEPOINT a", Write, is!(R::TransactionControl)),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", Write, is!(R::TransactionControl)),
    ("SET search_path TO app, public", Write, is!(R::SessionCommand)),
    ("RESET ALL", Write, is!(R::SessionCommand)),
    ("DISCARD ALL", Write, is!(R::SessionCommand)),
    ("PREPARE q AS SELECT 1", Write, is!(R::SessionCommand)),
    ("DEALLOCATE q", Write, is!(R::SessionCommand)),
    ("LISTEN ch", Write, is!(R::SessionCommand)),
    ("UNLISTEN *", Write, is!(R::SessionCommand)),
    ("DECLARE c CURSOR FOR SELECT * FROM t", Read, is!(R::Cursor)),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", Write, is!(R::Cursor)),
    ("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", Write, is!(R::Locking)),
    // --- Comments.
    ("/* a comment */ SELECT 1", Read, is!(R::Select)),
    ("-- INSERT INTO t VALUES (1)\nSELECT 1", Read, is!(R::Select)),
    ("SELECT 1 /* ; DELETE FROM t; */", Read, is!(R::Select)),
    ("SELECT /* nextval('s') */ a -- FOR UPDATE\nFROM t", Read, is!(R::Select)),
    ("/* outer /* nested FOR UPDATE */ still comment */ SELECT 1", Read, is!(R::Select)),
    ("-- SELECT 1\nDELETE FROM t", Write, is!(R::Dml)),
    // --- Multi-statement strings.
    ("SELECT 1; SELECT 2", Read, is!(R::Select)),
    ("SELECT 1; VALUES (2)", Read, is!(R::Select)),
    ("SELECT 1; DELETE FROM t", Write, is!(R::Dml)),
    ("SELECT 1; SELECT nextval('s'); INSERT INTO t VALUES (1)", Write, is!(R::SideEffectFunction(_))),
    ("BEGIN; UPDATE t SET a = 1; COMMIT;", Write, is!(R::TransactionControl)),
    ("SELECT 1; SELECT * FROM t FOR UPDATE", Write, is!(R::Locking)),
    ("SELECT 1; this is not sql", Write, is!(R::Unparsable)),
    ("SELECT 1 foo bar", Write, is!(R::Unparsable)),
    // --- Empty.
    ("", Read, is!(R::Empty)),
    ("   \n\t ", Read, is!(R::Empty)),
    (";", Read, is!(R::Empty)),
    (" ; ;; ", Read, is!(R::Empty)),
    ("-- only a comment", Read, is!(R::Empty)),
    ("/* only */ /* comments */ ;", Read, is!(R::Empty)),
    // --- Hints.
    ("/* palisade: primary */ SELECT 1", Write, is!(R::HintPrimary)),
    ("/*palisade:PRIMARY*/SELECT 1", Write, is!(R::HintPrimary)),
    ("-- palisade: primary\nSELECT * FROM t", Write, is!(R::HintPrimary)),
    ("  /* Palisade : Primary */ SELECT 1", Write, is!(R::HintPrimary)),
    ("/* palisade: replica */ SELECT 1", Read, is!(R::Select)),
    ("-- palisade: replica\nSELECT * FROM t", Read, is!(R::Select)),
    ("/* palisade: replica */ INSERT INTO t VALUES (1)", Write, is!(R::Dml)),
    ("/* palisade: replica */ SELECT nextval('s')", Write, is!(R::SideEffectFunction(_))),
    ("/* palisade: replica */ SELECT * FROM t FOR UPDATE", Write, is!(R::Locking)),
    ("/* palisade: primary */ INSERT INTO t VALUES (1)", Write, is!(R::Dml)),
    ("/* palisade: primary */ this is not sql", Write, is!(R::Unparsable)),
    ("SELECT 1 /* palisade: primary */", Read, is!(R::Select)),
    ("/* palisade: nowhere */ SELECT 1", Read, is!(R::Select)),
    ("/* palisade: primary please */ SELECT 1", Read, is!(R::Select)),
    // --- Unknown syntax and garbage.
    ("this is not sql", Write, is!(R::Unparsable)),
    ("SELEC 1", Write, is!(R::Unparsable)),
    ("SELECT 'unterminated", Write, is!(R::Unparsable)),
    ("SELECT $$unterminated", Write, is!(R::Unparsable)),
    ("SELECT \"unterminated", Write, is!(R::Unparsable)),
    ("SELECT (1", Write, is!(R::Unparsable)),
    ("SELECT 1)", Write, is!(R::Unparsable)),
    ("/* unterminated comment SELECT 1", Write, is!(R::Unparsable)),
];

#[test]
fn table() {
    let volatile = volatile();
    let mut failures = Vec::new();
    for (sql, class, reason) in TABLE {
        let got = classify(sql, &volatile);
        if got.class != *class || !reason(&got.reason) {
            failures.push(format!(
                "{sql:?}: got {:?} / {:?}, want {class:?}",
                got.class, got.reason
            ));
        }
    }
    assert!(TABLE.len() >= 170, "table has {} rows", TABLE.len());
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn writes_never_go_to_a_replica_whatever_the_hint() {
    for (sql, class, _) in TABLE {
        if classify(sql, &volatile()).hint.is_some() {
            continue; // the first hint wins: these rows test their own
        }
        let got = classify(&format!("/* palisade: replica */ {sql}"), &volatile());
        assert_eq!(got.class, *class, "{sql:?}");
        assert_eq!(got.hint, Some(Hint::Replica), "{sql:?}");
    }
}

fn effects(sql: &str) -> Vec<SessionEffect> {
    let got = classify(sql, &volatile());
    if got.effects.iter().any(|e| matches!(e, E::Pin(_))) {
        assert_eq!(
            got.class, Write,
            "a pinning statement must reach the primary: {sql:?}"
        );
    }
    got.effects
}

fn set(name: &str, value: &str, local: bool) -> SessionEffect {
    E::Set {
        name: name.into(),
        value: SettingValue::Sql(value.into()),
        local,
    }
}

fn reset(name: &str) -> SessionEffect {
    E::Reset {
        name: Some(name.into()),
    }
}

#[test]
fn transaction_effects() {
    assert_eq!(effects("BEGIN"), [E::Begin { read_only: false }]);
    assert_eq!(effects("begin work"), [E::Begin { read_only: false }]);
    assert_eq!(effects("BEGIN READ ONLY"), [E::Begin { read_only: true }]);
    // Hot standbys refuse SERIALIZABLE: such a transaction needs the primary.
    let on_primary = [E::Begin { read_only: false }, E::TransactionNeedsPrimary];
    assert_eq!(
        effects("START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE"),
        on_primary
    );
    assert_eq!(
        effects("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY"),
        on_primary
    );
    // Asked for, READ WRITE holds whatever the session's default.
    assert_eq!(effects("BEGIN READ WRITE"), on_primary);
    assert_eq!(
        effects("BEGIN READ ONLY ISOLATION LEVEL SERIALIZABLE, ISOLATION LEVEL READ COMMITTED"),
        [E::Begin { read_only: true }]
    );
    assert_eq!(
        effects("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY NOT DEFERRABLE"),
        [E::Begin { read_only: true }]
    );
    assert_eq!(effects("BEGIN READ ONLY, READ WRITE"), on_primary);
    assert_eq!(effects("COMMIT"), [E::Commit]);
    assert_eq!(effects("END"), [E::Commit]);
    assert_eq!(effects("COMMIT AND CHAIN"), [E::Commit, E::Chain]);
    assert_eq!(effects("ROLLBACK"), [E::Rollback]);
    assert_eq!(effects("ABORT"), [E::Rollback]);
    assert_eq!(effects("ROLLBACK AND CHAIN"), [E::Rollback, E::Chain]);
    assert_eq!(
        effects("ROLLBACK TO SAVEPOINT a"),
        [E::RollbackTo { name: "a".into() }]
    );
    assert_eq!(
        effects("ROLLBACK TO \"B\""),
        [E::RollbackTo { name: "B".into() }]
    );
    assert_eq!(effects("SAVEPOINT A"), [E::Savepoint { name: "a".into() }]);
    assert_eq!(
        effects("RELEASE SAVEPOINT a"),
        [E::Release { name: "a".into() }]
    );
    assert_eq!(effects("RELEASE a"), [E::Release { name: "a".into() }]);
    assert_eq!(effects("SET TRANSACTION READ ONLY"), []);
    assert_eq!(
        effects("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
        []
    );
    // What no hot standby runs: the transaction needs the primary.
    for sql in [
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET TRANSACTION READ WRITE",
        "SET TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE, DEFERRABLE",
    ] {
        assert_eq!(effects(sql), [E::TransactionNeedsPrimary], "{sql}");
    }
    assert_eq!(
        effects("BEGIN READ ONLY; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
        [E::Begin { read_only: true }, E::TransactionNeedsPrimary]
    );
    // The same as settings: they end with the transaction, never kept.
    assert_eq!(
        effects("SET transaction_isolation = serializable"),
        [
            set("transaction_isolation", "serializable", true),
            E::TransactionNeedsPrimary
        ]
    );
    assert_eq!(
        effects("SET transaction_read_only TO off"),
        [
            set("transaction_read_only", "off", true),
            E::TransactionNeedsPrimary
        ]
    );
    assert_eq!(
        effects("SET transaction_isolation TO 'repeatable read'"),
        [set("transaction_isolation", "'repeatable read'", true)]
    );
    assert_eq!(
        effects("SELECT set_config('transaction_isolation', 'serializable', false)"),
        [
            E::Set {
                name: "transaction_isolation".into(),
                value: SettingValue::Text("serializable".into()),
                local: true
            },
            E::TransactionNeedsPrimary
        ]
    );
    // SET SESSION CHARACTERISTICS is for the next transactions.
    assert!(
        !effects("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .contains(&E::TransactionNeedsPrimary)
    );
    assert_eq!(
        effects("BEGIN; SELECT 1; COMMIT"),
        [E::Begin { read_only: false }, E::Commit]
    );
}

#[test]
fn set_and_reset_effects() {
    assert_eq!(
        effects("SET search_path TO \"$user\", public"),
        [set("search_path", "\"$user\", public", false)]
    );
    assert_eq!(
        effects("SET SESSION application_name = 'app'"),
        [set("application_name", "'app'", false)]
    );
    assert_eq!(
        effects("set Statement_Timeout = 5000"),
        [set("statement_timeout", "5000", false)]
    );
    assert_eq!(
        effects("SET LOCAL statement_timeout = 5000"),
        [set("statement_timeout", "5000", true)]
    );
    assert_eq!(
        effects("SET enable_seqscan TO off"),
        [set("enable_seqscan", "off", false)]
    );
    assert_eq!(
        effects("SET search_path TO DEFAULT"),
        [reset("search_path")]
    );
    assert_eq!(
        effects("SET myapp.tenant = DEFAULT"),
        [reset("myapp.tenant")]
    );
    assert_eq!(
        effects("SET LOCAL search_path TO DEFAULT"),
        [set("search_path", "DEFAULT", true)]
    );
    assert_eq!(
        effects("SET TIME ZONE 'UTC'"),
        [set("timezone", "'UTC'", false)]
    );
    assert_eq!(effects("SET TIME ZONE LOCAL"), [reset("timezone")]);
    assert_eq!(
        effects("SET timezone = 'Europe/Paris'"),
        [set("timezone", "'Europe/Paris'", false)]
    );
    assert_eq!(effects("SET ROLE alice"), [set("role", "alice", false)]);
    assert_eq!(
        effects("SET LOCAL ROLE alice"),
        [set("role", "alice", true)]
    );
    assert_eq!(effects("SET ROLE NONE"), [reset("role")]);
    assert_eq!(
        effects("SET SESSION AUTHORIZATION bob"),
        [set("session_authorization", "bob", false)]
    );
    assert_eq!(
        effects("SET SESSION AUTHORIZATION DEFAULT"),
        [reset("session_authorization")]
    );
    assert_eq!(
        effects("SET NAMES 'UTF8'"),
        [set("client_encoding", "'UTF8'", false)]
    );
    assert_eq!(
        effects(
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY"
        ),
        [
            set("default_transaction_read_only", "on", false),
            set("default_transaction_isolation", "'serializable'", false),
        ]
    );
    assert_eq!(effects("RESET ALL"), [E::Reset { name: None }]);
    assert_eq!(effects("RESET search_path"), [reset("search_path")]);
    assert_eq!(effects("RESET ROLE"), [reset("role")]);
    assert_eq!(
        effects("RESET SESSION AUTHORIZATION"),
        [reset("session_authorization")]
    );
}

#[test]
fn setting_effects() {
    let text = |name: &str, value: &str, local: bool| E::Set {
        name: name.into(),
        value: SettingValue::Text(value.into()),
        local,
    };
    // set_config() with literal arguments is a setting given again.
    assert_eq!(
        effects("SELECT set_config('search_path', 'x, \"Y\"', false)"),
        [text("search_path", "x, \"Y\"", false)]
    );
    assert_eq!(
        effects("SELECT pg_catalog.set_config('search_path', '', false)"),
        [text("search_path", "", false)]
    );
    assert_eq!(
        effects("SELECT set_config('MyApp.User', 'it''s', 'true') AS previous"),
        [text("myapp.user", "it's", true)]
    );
    // Anything else pins: what it sets is not known here.
    for sql in [
        "SELECT set_config($1, $2, false)",
        "SELECT set_config('a.b', $1, false)",
        "SELECT set_config('a.b', 'x', $1)",
        "SELECT set_config('a.b', 'x', false) FROM generate_series(1, 2)",
        "SELECT set_config('a.b', 'x', false) LIMIT 0",
        "SELECT set_config('a.b', 'x', false), set_config('c.d', 'y', false)",
        "SELECT set_config('palisade.pin', 'on', false)",
        "INSERT INTO t VALUES (set_config('a.b', 'x', false))",
    ] {
        let got = effects(sql);
        let pins = got.iter().all(|e| *e == E::Pin(PinReason::Setting));
        assert!(pins && !got.is_empty(), "{sql}: {got:?}");
    }
    // SET ... FROM CURRENT keeps the node's own value, unseen here: a pin.
    for sql in [
        "SET work_mem FROM CURRENT",
        "set session myapp.tenant from current;",
        "SELECT 1; SET search_path FROM CURRENT",
    ] {
        let got = classify(sql, &volatile());
        assert_eq!(got.effects, [E::Pin(PinReason::Setting)], "{sql}");
        assert_eq!(got.class, Write, "{sql}");
    }
    assert_eq!(effects("SET LOCAL work_mem FROM CURRENT"), []);
}

#[test]
fn prepared_statement_effects() {
    assert_eq!(
        effects("PREPARE q(int) AS SELECT * FROM t WHERE id = $1"),
        [E::Prepare {
            name: "q".into(),
            class: Read
        }]
    );
    assert_eq!(
        effects("PREPARE w AS UPDATE t SET a = $1"),
        [E::Prepare {
            name: "w".into(),
            class: Write
        }]
    );
    assert_eq!(
        effects("DEALLOCATE q"),
        [E::Deallocate {
            name: Some("q".into())
        }]
    );
    assert_eq!(
        effects("DEALLOCATE PREPARE q"),
        [E::Deallocate {
            name: Some("q".into())
        }]
    );
    assert_eq!(effects("DEALLOCATE ALL"), [E::Deallocate { name: None }]);
    // Unquoted names fold to lower case, as PostgreSQL resolves them.
    assert_eq!(
        effects("PREPARE MyQuery AS SELECT 1; PREPARE \"MyQuery\" AS SELECT 2; DEALLOCATE MYQUERY"),
        [
            E::Prepare {
                name: "myquery".into(),
                class: Read
            },
            E::Prepare {
                name: "MyQuery".into(),
                class: Read
            },
            E::Deallocate {
                name: Some("myquery".into())
            },
        ]
    );
    let c = classify("EXECUTE MyQuery(1)", &volatile());
    assert_eq!(c.reason, R::ExecutePrepared("myquery".into()));
    assert_eq!(
        effects("DEALLOCATE \"all\""),
        [E::Deallocate {
            name: Some("all".into())
        }]
    );
    // Preparing does not run the statement, so no pin yet.
    assert_eq!(
        effects("PREPARE l AS SELECT pg_advisory_lock(1)"),
        [E::Prepare {
            name: "l".into(),
            class: Write
        }]
    );
}

#[test]
fn set_xml_option_follows_the_session_though_sqlparser_has_no_such_form() {
    assert_eq!(
        effects("SET XML OPTION DOCUMENT"),
        [set("xmloption", "DOCUMENT", false)]
    );
    assert_eq!(
        effects("set session xml option content"),
        [set("xmloption", "content", false)]
    );
    assert_eq!(
        effects("SET LOCAL XML OPTION DOCUMENT"),
        [set("xmloption", "DOCUMENT", true)]
    );
    // What follows it in the same string is understood too.
    assert_eq!(
        effects("SET XML OPTION DOCUMENT; SET myapp.tenant = 7"),
        [
            set("xmloption", "DOCUMENT", false),
            set("myapp.tenant", "7", false)
        ]
    );
}

#[test]
fn a_string_too_long_to_parse_still_pins_by_its_first_words() {
    let big = "x".repeat(MAX_SQL_LEN);
    let sql = format!("/* load */ CREATE TEMP TABLE big AS SELECT length('{big}')");
    let c = classify(&sql, &volatile());
    assert_eq!((c.class, &c.reason), (Write, &Reason::Unparsable));
    assert_eq!(c.effects, [E::Pin(PinReason::TempObject)]);
    let c = classify(&format!("INSERT INTO t VALUES ('{big}')"), &volatile());
    assert!(c.effects.is_empty(), "an ordinary big write pins nothing");
    let c = classify(&format!("é{big}"), &volatile());
    assert!(c.effects.is_empty());
}

#[test]
fn listen_and_temp_object_pin_effects() {
    use PinReason::*;
    assert_eq!(effects("LISTEN jobs"), [E::Pin(Listen)]);
    assert_eq!(effects("UNLISTEN jobs"), []);
    assert_eq!(effects("UNLISTEN *"), [E::Unpin(Listen)]);
    assert_eq!(effects("CREATE TEMP TABLE x (a int)"), [E::Pin(TempObject)]);
    assert_eq!(
        effects("CREATE TEMPORARY TABLE x AS SELECT * FROM t"),
        [E::Pin(TempObject)]
    );
    assert_eq!(
        effects("CREATE TABLE pg_temp.x (a int)"),
        [E::Pin(TempObject)]
    );
    assert_eq!(
        effects("CREATE TEMP VIEW v AS SELECT 1"),
        [E::Pin(TempObject)]
    );
    assert_eq!(effects("CREATE TEMPORARY SEQUENCE s"), [E::Pin(TempObject)]);
    assert_eq!(
        effects("SELECT * INTO TEMP tmp FROM t"),
        [E::Pin(TempObject)]
    );
    assert_eq!(effects("CREATE TABLE x (a int)"), []);
}

#[test]
fn advisory_lock_effects() {
    use PinReason::*;
    assert_eq!(
        effects("CREATE TABLE x (a bigint DEFAULT pg_advisory_lock(1))"),
        []
    );
    assert_eq!(
        effects("CREATE TABLE x AS SELECT pg_advisory_lock(1)"),
        [E::Pin(AdvisoryLock)]
    );
    assert_eq!(
        effects("SELECT pg_advisory_lock(1)"),
        [E::Pin(AdvisoryLock)]
    );
    assert_eq!(
        effects("SELECT pg_advisory_lock_shared(1)"),
        [E::Pin(AdvisoryLock)]
    );
    assert_eq!(
        effects("SELECT pg_try_advisory_lock(1, 2)"),
        [E::Pin(AdvisoryLock)]
    );
    assert_eq!(
        effects("SELECT pg_catalog.pg_try_advisory_lock_shared(1)"),
        [E::Pin(AdvisoryLock)]
    );
    assert_eq!(
        effects("SELECT * FROM t WHERE pg_try_advisory_lock(t.id) LIMIT 1"),
        [E::Pin(AdvisoryLock)]
    );
    assert_eq!(effects("SELECT pg_advisory_xact_lock(1)"), []);
    assert_eq!(effects("SELECT pg_try_advisory_xact_lock(1)"), []);
    assert_eq!(
        effects("SELECT pg_advisory_unlock_all()"),
        [E::Unpin(AdvisoryLock)]
    );
    assert_eq!(
        effects("UPDATE t SET a = 1 WHERE pg_advisory_lock(id) IS NOT NULL"),
        [E::Pin(AdvisoryLock)]
    );
    assert_eq!(effects("EXPLAIN SELECT pg_advisory_lock(1)"), []);
    assert_eq!(
        effects("EXPLAIN ANALYZE SELECT pg_advisory_lock(1)"),
        [E::Pin(AdvisoryLock)]
    );
    assert_eq!(effects("CREATE VIEW v AS SELECT pg_advisory_lock(1)"), []);
}

#[test]
fn cursor_explicit_and_discard_pin_effects() {
    use PinReason::*;
    assert_eq!(
        effects("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t"),
        [E::Pin(HoldCursor)]
    );
    assert_eq!(
        effects("DECLARE c CURSOR WITHOUT HOLD FOR SELECT * FROM t"),
        []
    );
    assert_eq!(effects("CLOSE ALL"), [E::Unpin(HoldCursor)]);
    assert_eq!(effects("CLOSE c"), []);
    assert_eq!(effects("SET palisade.pin = on"), [E::Pin(Explicit)]);
    assert_eq!(effects("SET palisade.pin TO true"), [E::Pin(Explicit)]);
    assert_eq!(effects("SET Palisade.Pin = 'on'"), [E::Pin(Explicit)]);
    assert_eq!(effects("SET palisade.pin = off"), [E::Unpin(Explicit)]);
    assert_eq!(effects("SET palisade.pin TO DEFAULT"), [E::Unpin(Explicit)]);
    assert_eq!(effects("RESET palisade.pin"), [E::Unpin(Explicit)]);
    assert_eq!(effects("DISCARD TEMP"), [E::Unpin(TempObject)]);
    assert_eq!(effects("DISCARD PLANS"), []);
    assert_eq!(
        effects("DISCARD ALL"),
        [
            E::Reset { name: None },
            E::Deallocate { name: None },
            E::Unpin(Listen),
            E::Unpin(TempObject),
            E::Unpin(AdvisoryLock),
            E::Unpin(HoldCursor),
            E::Unpin(PinReason::Setting),
        ]
    );
}

#[test]
fn catalog_function_effects() {
    let changed = [E::CatalogFunctionsChanged];
    assert_eq!(
        effects("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$"),
        changed
    );
    assert_eq!(
        effects("CREATE OR REPLACE FUNCTION f(a int) RETURNS void VOLATILE LANGUAGE plpgsql AS $$ BEGIN INSERT INTO t VALUES (a); END $$"),
        changed
    );
    assert_eq!(effects("ALTER FUNCTION f() VOLATILE"), changed);
    assert_eq!(effects("DROP FUNCTION f(int)"), changed);
    assert_eq!(effects("DROP PROCEDURE p"), changed);
    assert_eq!(effects("CREATE EXTENSION dblink"), changed);
    // Unparsable by sqlparser, recognised from their first words.
    assert_eq!(
        effects("CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$"),
        changed
    );
    assert_eq!(effects("DROP ROUTINE f"), changed);
    assert_eq!(effects("ALTER EXTENSION x UPDATE"), changed);
    assert_eq!(
        effects("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END"),
        changed,
        "the END of a function body is not a COMMIT"
    );
    assert_eq!(
        effects("SET x.y = 1; CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; LISTEN c"),
        [set("x.y", "1", false), E::CatalogFunctionsChanged, E::Pin(PinReason::Listen)]
    );
    assert_eq!(
        effects("CREATE TEMP TABLE t (a int) PARTITION OF nonsense nonsense"),
        [E::Pin(PinReason::TempObject)]
    );
}

#[test]
fn effects_follow_statement_order() {
    assert_eq!(
        effects("SET search_path = app; BEGIN READ ONLY; LISTEN c; COMMIT"),
        [
            set("search_path", "app", false),
            E::Begin { read_only: true },
            E::Pin(PinReason::Listen),
            E::Commit,
        ]
    );
}

#[test]
fn statements_are_split_before_parsing() {
    // sqlparser alone would read what follows `COPY ... FROM STDIN;` as data.
    let c = classify("COPY t FROM STDIN; SET x.y = 1", &volatile());
    assert_eq!((c.class, &c.reason), (Write, &R::CopyFrom));
    assert_eq!(c.effects, [set("x.y", "1", false)]);
    // The chain cap is per statement: a long migration script still parses.
    let mut script = String::new();
    for i in 0..(MAX_CHAIN_TOKENS / 4) {
        script.push_str(&format!("ALTER TABLE t{i} ADD CHECK (a > 0 AND b < 1);\n"));
    }
    script.push_str("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;");
    let c = classify(&script, &volatile());
    assert_eq!(c.reason, R::Ddl);
    assert_eq!(c.effects, [E::CatalogFunctionsChanged]);
    // A semicolon inside parentheses does not end the statement.
    assert_eq!(
        classify("SELECT (1; SELECT 2)", &volatile()).reason,
        R::Unparsable
    );
}

#[test]
fn hint_is_recorded_and_applies_to_the_whole_string() {
    let c = classify("/* palisade: primary */ SELECT 1; SELECT 2", &volatile());
    assert_eq!((c.class, c.hint), (Write, Some(Hint::Primary)));
    let c = classify("-- palisade: replica\nSELECT 1; SELECT 2", &volatile());
    assert_eq!((c.class, c.hint), (Read, Some(Hint::Replica)));
    let c = classify("-- palisade: replica\nSELECT 1; DELETE FROM t", &volatile());
    assert_eq!((c.class, c.hint), (Write, Some(Hint::Replica)));
    let c = classify("/* app=web */ -- palisade: primary\nSELECT 1", &volatile());
    assert_eq!((c.class, c.hint), (Write, Some(Hint::Primary)));
    let c = classify("SELECT 1; /* palisade: primary */ SELECT 2", &volatile());
    assert_eq!((c.class, c.hint), (Read, None));
}

#[test]
fn consistency_hints_name_a_level_for_one_statement() {
    use crate::config::Consistency as L;
    for (sql, level) in [
        ("/* palisade: strong */ SELECT 1", Some(L::Strong)),
        ("/* PALISADE: Eventual */ SELECT 1", Some(L::Eventual)),
        (
            "-- palisade: consistency=bounded\nSELECT 1",
            Some(L::Bounded),
        ),
        (
            "/* palisade: consistency = causal */ SELECT 1",
            Some(L::Causal),
        ),
        ("/* palisade: consistency */ SELECT 1", None),
        ("/* palisade: consistency=fresh */ SELECT 1", None),
        ("/* palisade: stronger */ SELECT 1", None),
    ] {
        let c = classify(sql, &volatile());
        assert_eq!(c.hint, level.map(Hint::Consistency), "{sql:?}");
        assert_eq!(c.class, Read, "a level never makes a read a write: {sql:?}");
    }
    let c = classify("/* palisade: primary */ BEGIN; SET x.y = 1", &volatile());
    assert_eq!(
        c.effects,
        [E::Begin { read_only: false }, set("x.y", "1", false)]
    );
}

#[test]
fn volatile_list_is_the_callers() {
    let none = HashSet::new();
    assert_eq!(classify("SELECT audit(1)", &none).class, Read);
    assert_eq!(classify("SELECT audit(1)", &volatile()).class, Write);
    let qualified_only: HashSet<String> = ["app.f".to_string()].into();
    assert_eq!(classify("SELECT app.f()", &qualified_only).class, Write);
    assert_eq!(classify("SELECT db.app.f()", &qualified_only).class, Write);
    assert_eq!(classify("SELECT f()", &qualified_only).class, Read);
}

/// A tiny deterministic generator, so the garbage is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn never_panics_on_garbage() {
    let none = HashSet::new();
    let mut rng = Lcg(7);
    let alphabet: Vec<char> =
        "SELECT FROM WHERE ()[]{};,.'\"$`\\/*-+=<>!?:@#%^&|~ \n\tabc019_é😀\u{0}"
            .chars()
            .collect();
    for _ in 0..3000 {
        let len = (rng.next() % 80) as usize;
        let s: String = (0..len)
            .map(|_| alphabet[(rng.next() as usize) % alphabet.len()])
            .collect();
        let _ = classify(&s, &none);
    }
    for _ in 0..500 {
        let bytes: Vec<u8> = (0..(rng.next() % 64)).map(|_| rng.next() as u8).collect();
        let _ = classify(&String::from_utf8_lossy(&bytes), &none);
    }
    // Mutations of real statements: truncated at every char boundary.
    for (sql, _, _) in TABLE {
        for (i, _) in sql.char_indices() {
            let _ = classify(&sql[..i], &volatile());
        }
    }
}

#[test]
fn unbalanced_and_unterminated_input_is_unparsable() {
    let none = HashSet::new();
    for sql in [
        "SELECT ((((1",
        "SELECT 1))))",
        "SELECT 'a",
        "SELECT $x$ a",
        "SELECT \"a",
        "SELECT E'\\",
        "SELECT * FROM t WHERE a = ANY(",
        "INSERT INTO t VALUES (1,",
        "WITH x AS (",
    ] {
        let c = classify(sql, &none);
        assert_eq!((c.class, &c.reason), (Write, &R::Unparsable), "{sql:?}");
    }
    // The statements before the broken one still count.
    let c = classify("BEGIN READ ONLY; SELECT (", &none);
    assert_eq!(c.class, Write);
    assert_eq!(c.effects, [E::Begin { read_only: true }]);
}

#[test]
fn deep_nesting_is_unparsable_not_a_crash() {
    let none = HashSet::new();
    let deep = [
        format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000)),
        format!("SELECT {}1{}", "(SELECT ".repeat(5_000), ")".repeat(5_000)),
        format!("SELECT {}1{}", "f(".repeat(5_000), ")".repeat(5_000)),
        format!("SELECT {}1{}", "ARRAY[".repeat(5_000), "]".repeat(5_000)),
        format!("SELECT {} true", "NOT ".repeat(10_000)),
        format!("SELECT {} 1", "- ".repeat(10_000)),
        format!(
            "SELECT {}1{}",
            "CASE WHEN true THEN ".repeat(2_000),
            " END".repeat(2_000)
        ),
    ];
    for sql in &deep {
        let c = classify(sql, &none);
        assert_eq!(
            (c.class, &c.reason),
            (Write, &R::Unparsable),
            "{}",
            &sql[..40]
        );
    }
}

#[test]
fn long_chains_stay_within_the_stack() {
    // Left-deep chains are not nested in the text, so only the chain-token
    // cap bounds them: just under it they classify, just over they do not.
    let none = HashSet::new();
    let under = MAX_CHAIN_TOKENS - 10;
    let ok = [
        format!("SELECT 1{}", "+1".repeat(under)),
        format!("SELECT * FROM t WHERE a{}", " OR a".repeat(under)),
        format!("SELECT 1{}", " UNION SELECT 1".repeat(under)),
        format!("SELECT a{}", "->'k'".repeat(under)),
        format!("SELECT 1{}", "::int".repeat(under / 2)),
    ];
    for sql in &ok {
        assert_eq!(classify(sql, &none).class, Read, "{}", &sql[..40]);
    }
    let over = format!("SELECT 1{}", "+1".repeat(MAX_CHAIN_TOKENS + 1));
    assert_eq!(classify(&over, &none).reason, R::Unparsable);
    // Long but flat is fine.
    let in_list = format!("SELECT * FROM t WHERE a IN (1{})", ",1".repeat(50_000));
    assert_eq!(classify(&in_list, &none).class, Read);
}

#[test]
fn oversized_input_is_unparsable() {
    let none = HashSet::new();
    let huge = format!("SELECT 1 /* {} */", "x".repeat(MAX_SQL_LEN));
    assert_eq!(classify(&huge, &none).reason, R::Unparsable);
    let hinted = format!(
        "/* palisade: replica */ SELECT '{}'",
        "x".repeat(MAX_SQL_LEN)
    );
    let c = classify(&hinted, &none);
    assert_eq!((c.class, c.hint), (Write, Some(Hint::Replica)));
}

#[test]
fn prepare_texts_recreate_each_prepare_alone() {
    let texts = super::prepare_texts(
        "PREPARE p AS SELECT 1; SELECT 2; PREPARE \"Q\"(int) AS SELECT $1 + 1",
    );
    let names: Vec<&str> = texts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["p", "Q"]);
    for (_, sql) in &texts {
        let again = classify(sql, &HashSet::new());
        assert_eq!(again.statements, 1, "{sql}");
        assert!(
            matches!(again.effects[..], [SessionEffect::Prepare { .. }]),
            "{sql}"
        );
    }
    assert!(super::prepare_texts("PREPARE broken AS").is_empty());
}

#[test]
fn the_first_unlisted_call_is_any_function_the_built_in_list_does_not_know() {
    use super::first_unlisted_call as unlisted;
    assert_eq!(unlisted("SELECT 1 FROM t WHERE x = $1"), None);
    assert_eq!(unlisted("SELECT nextval('s')"), None, "listed");
    assert_eq!(unlisted("SELECT my_fn()"), Some("my_fn".into()));
    assert_eq!(
        unlisted("SELECT 1; SELECT * FROM App.Gen(3)"),
        Some("app.gen".into())
    );
    assert_eq!(
        unlisted("SELECT x FROM t WHERE y IN (SELECT now())"),
        Some("now".into()),
        "built-ins outside the list count too"
    );
    assert_eq!(unlisted("SELECT (((("), None, "unparsable");
}
