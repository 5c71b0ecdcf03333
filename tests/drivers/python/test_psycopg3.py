"""psycopg 3 through Palisade: text and binary, pipeline mode, server cursors, COPY, prepare."""
import hashlib
import os
import threading
import time

import psycopg
import pytest
from psycopg import errors, sql

from conftest import BIG, COPY_ROWS, ROUNDS, SET_FORMS, SET_IDS, SET_PROBES, kwargs, primary_count


def connect(**kw):
    return psycopg.connect(autocommit=kw.pop("autocommit", True), **kwargs(), **kw)


def q(name):
    return sql.Identifier(name)


# ---- large values -------------------------------------------------------------

@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_text_param_5mb_roundtrip(binary):
    value = "x" * (BIG - 7) + "palisad"
    with connect() as c:
        row = c.cursor(binary=binary).execute("SELECT %s::text, length(%s::text)", [value, value]).fetchone()
        assert row[1] == BIG
        assert row[0] == value


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_bytea_param_5mb_roundtrip(binary):
    value = os.urandom(BIG)
    with connect() as c:
        row = c.cursor(binary=binary).execute("SELECT %b::bytea, md5(%b::bytea)", [value, value]).fetchone()
        assert row[1] == hashlib.md5(value).hexdigest()
        assert bytes(row[0]) == value


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_5mb_result_from_server(binary):
    # only the result is big: the proxy-to-client direction on its own
    with connect() as c:
        row = c.cursor(binary=binary).execute(
            "SELECT repeat('x', %s), decode(repeat('ab', %s), 'hex')", [BIG, BIG // 2]).fetchone()
        assert len(row[0]) == BIG and bytes(row[1]) == b"\xab" * (BIG // 2)


def test_literal_5mb_simple_query():
    # No parameters: psycopg 3 sends this as a simple Query message of 5 MB.
    with connect() as c:
        row = c.execute("SELECT length('" + "y" * BIG + "')").fetchone()
        assert row[0] == BIG


def test_big_value_into_table(table):
    value = "z" * BIG
    with connect() as c:
        c.execute(sql.SQL("CREATE TABLE {} (id int primary key, v text)").format(q(table)))
        c.execute(sql.SQL("INSERT INTO {} VALUES (1, %s)").format(q(table)), [value])
        got = c.execute(sql.SQL("SELECT v FROM {} WHERE id = 1").format(q(table))).fetchone()[0]
        assert got == value


def test_row_of_1000_columns(table):
    cols = ", ".join("%d AS c%d" % (i, i) for i in range(1000))
    with connect() as c:
        row = c.execute("SELECT " + cols).fetchone()
        assert list(row) == list(range(1000))
        c.execute(sql.SQL("CREATE TABLE {} (" + ", ".join("c%d int" % i for i in range(1000)) + ")").format(q(table)))
        ph = ", ".join(["%s"] * 1000)
        c.execute(sql.SQL("INSERT INTO {} VALUES (" + ph + ")").format(q(table)), list(range(1000)))
        row = c.execute(sql.SQL("SELECT * FROM {}").format(q(table))).fetchone()
        assert len(row) == 1000 and row[999] == 999


# ---- COPY -----------------------------------------------------------------------

@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_copy_100k_in_and_out(table, binary):
    fmt = " (FORMAT BINARY)" if binary else ""
    with connect() as c:
        cur = c.cursor()
        cur.execute(sql.SQL("CREATE TABLE {} (id int, v text)").format(q(table)))
        with cur.copy(sql.SQL("COPY {} (id, v) FROM STDIN" + fmt).format(q(table))) as cp:
            if binary:
                cp.set_types(["int4", "text"])
            for i in range(COPY_ROWS):
                cp.write_row((i, "row %d" % i))
        assert cur.execute(sql.SQL("SELECT count(*), sum(id) FROM {}").format(q(table))).fetchone() == (
            COPY_ROWS, COPY_ROWS * (COPY_ROWS - 1) // 2)
        n = 0
        with cur.copy(sql.SQL("COPY {} TO STDOUT" + fmt).format(q(table))) as cp:
            if binary:
                cp.set_types(["int4", "text"])
            for row in cp.rows():
                n += 1
        assert n == COPY_ROWS
        # and the session is still usable afterwards
        assert cur.execute("SELECT 1").fetchone() == (1,)
    pc = primary_count(table)
    assert pc in (None, COPY_ROWS)


# ---- LISTEN / NOTIFY, cancel ------------------------------------------------------

def test_listen_notify_between_two_connections():
    channel = "drv_ch_%d" % os.getpid()
    with connect() as listener, connect() as notifier:
        listener.execute("LISTEN " + channel)
        notifier.execute("SELECT pg_notify(%s, %s)", [channel, "hello"])
        notifier.execute("NOTIFY " + channel + ", 'second'")
        got = [n.payload for n in listener.notifies(timeout=15, stop_after=2)]
        assert got == ["hello", "second"]
        assert listener.execute("SELECT 1").fetchone() == (1,)


def test_cancel_pg_sleep_then_session_usable():
    with connect() as c:
        timer = threading.Timer(1.0, c.cancel)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(errors.QueryCanceled) as ei:
            c.execute("SELECT pg_sleep(30)")
        timer.cancel()
        assert ei.value.sqlstate == "57014"
        assert time.monotonic() - t0 < 15
        assert c.execute("SELECT 42").fetchone() == (42,)


def test_statement_timeout_57014_then_session_usable():
    with connect() as c:
        c.execute("SET statement_timeout = '500ms'")
        with pytest.raises(errors.QueryCanceled) as ei:
            c.execute("SELECT pg_sleep(30)")
        assert ei.value.sqlstate == "57014"
        c.execute("RESET statement_timeout")
        assert c.execute("SELECT 1").fetchone() == (1,)


# ---- errors ---------------------------------------------------------------------

def test_errors_outside_transaction_leave_session_usable(table):
    with connect() as c:
        c.execute(sql.SQL("CREATE TABLE {} (id int primary key)").format(q(table)))
        c.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(q(table)))
        for stmt, params, state in [
            ("SELEC 1", None, "42601"),
            ("SELECT 1/0", None, "22012"),
            ("SELECT 1/%s", [0], "22012"),
            (sql.SQL("INSERT INTO {} VALUES (1)").format(q(table)), None, "23505"),
            (sql.SQL("INSERT INTO {} VALUES (%s)").format(q(table)), [1], "23505"),
        ]:
            with pytest.raises(psycopg.Error) as ei:
                c.execute(stmt, params)
            assert ei.value.sqlstate == state
            assert c.execute("SELECT 7").fetchone() == (7,)
        assert c.execute(sql.SQL("SELECT count(*) FROM {}").format(q(table))).fetchone() == (1,)


def test_errors_inside_transaction_leave_session_usable(table):
    with connect(autocommit=False) as c:
        c.execute(sql.SQL("CREATE TABLE {} (id int primary key)").format(q(table)))
        c.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(q(table)))
        c.commit()
        for stmt, state in [("SELEC 1", "42601"), ("SELECT 1/0", "22012"),
                            (sql.SQL("INSERT INTO {} VALUES (1)").format(q(table)), "23505")]:
            c.execute("SELECT 1")
            with pytest.raises(psycopg.Error) as ei:
                c.execute(stmt)
            assert ei.value.sqlstate == state
            with pytest.raises(errors.InFailedSqlTransaction):
                c.execute("SELECT 1")
            c.rollback()
            assert c.execute("SELECT 8").fetchone() == (8,)
            c.commit()
        # savepoint recovery inside one transaction
        with c.transaction():
            c.execute(sql.SQL("INSERT INTO {} VALUES (2)").format(q(table)))
            with pytest.raises(errors.UniqueViolation):
                with c.transaction():
                    c.execute(sql.SQL("INSERT INTO {} VALUES (2)").format(q(table)))
            c.execute(sql.SQL("INSERT INTO {} VALUES (3)").format(q(table)))
        c.commit()
        assert c.execute(sql.SQL("SELECT count(*) FROM {}").format(q(table))).fetchone() == (3,)


# ---- consistency ----------------------------------------------------------------

def test_write_then_read_200_rounds_one_connection(table):
    stale = []
    with connect() as c:
        c.execute(sql.SQL("CREATE TABLE {} (id int primary key, v text)").format(q(table)))
        ins = sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(q(table))
        sel = sql.SQL("SELECT v FROM {} WHERE id = %s").format(q(table))
        for i in range(ROUNDS):
            c.execute(ins, [i, "v%d" % i])
            row = c.execute(sel, [i]).fetchone()
            if row != ("v%d" % i,):
                stale.append(i)
    assert stale == [], "stale reads after own write: %d of %d" % (len(stale), ROUNDS)


def test_commit_on_one_connection_read_on_another_1000_rounds(table):
    """read-after-commit (the default): what one connection committed, the
    next read on another sees, and replicas serve most of those reads."""
    stale, on_replica, rounds = [], 0, 1000
    with connect() as a, connect() as b:
        a.execute(sql.SQL("CREATE TABLE {} (id int primary key, v text)").format(q(table)))
        ins = sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(q(table))
        sel = sql.SQL("SELECT (SELECT v FROM {} WHERE id = %s), pg_is_in_recovery()").format(q(table))
        for i in range(rounds):
            if i % 2:
                a.execute(ins, [i, "v%d" % i])
            else:
                with a.transaction():
                    a.execute(ins, [i, "v%d" % i])
            v, replica = b.execute(sel, [i]).fetchone()
            if v != "v%d" % i:
                stale.append(i)
            on_replica += replica
    assert stale == [], "stale reads after another connection's commit: %d of %d" % (len(stale), rounds)
    assert on_replica > rounds // 2, "replicas served only %d of %d reads" % (on_replica, rounds)


def test_table_created_on_one_connection_is_there_on_another(table):
    with connect() as a, connect() as b:
        a.execute(sql.SQL("CREATE TABLE {} (id int)").format(q(table)))
        assert b.execute(sql.SQL("SELECT count(*) FROM {}").format(q(table))).fetchone() == (0,)


def test_two_connections_at_once(table):
    with connect() as a, connect(autocommit=False) as b:
        a.execute(sql.SQL("CREATE TABLE {} (id int)").format(q(table)))
        b.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(q(table)))
        # b's row is not committed: a must not see it, and must not block
        assert a.execute(sql.SQL("SELECT count(*) FROM {}").format(q(table))).fetchone() == (0,)
        b.commit()
        a.execute(sql.SQL("INSERT INTO {} VALUES (2)").format(q(table)))
        assert a.execute(sql.SQL("SELECT count(*) FROM {}").format(q(table))).fetchone() == (2,)
        assert b.execute(sql.SQL("SELECT count(*) FROM {}").format(q(table))).fetchone() == (2,)
        b.commit()

    errs = []

    def worker(k):
        try:
            with connect() as c:
                for i in range(50):
                    c.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(q(table)), [1000 * k + i])
                    c.execute("SELECT 1")
        except Exception as e:  # noqa
            errs.append(e)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert errs == []
    with connect() as c:
        assert c.execute(sql.SQL("SELECT count(*) FROM {}").format(q(table))).fetchone() == (202,)


# ---- pipeline, server cursors, prepared statements --------------------------------

def test_pipeline_mode(table):
    with connect() as c:
        c.execute(sql.SQL("CREATE TABLE {} (id int primary key, v text)").format(q(table)))
        with c.pipeline():
            cur = c.cursor()
            for i in range(1000):
                cur.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(q(table)), [i, str(i)])
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(q(table)))
            cur2 = c.cursor()
            cur2.execute("SELECT %s::int + 1", [41])
            assert cur.fetchone() == (1000,)
            assert cur2.fetchone() == (42,)
        # executemany uses the pipeline too
        c.cursor().executemany(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(q(table)),
                               [(i, str(i)) for i in range(1000, 3000)])
        assert c.execute(sql.SQL("SELECT count(*) FROM {}").format(q(table))).fetchone() == (3000,)


def test_pipeline_mode_error_recovers(table):
    with connect() as c:
        c.execute(sql.SQL("CREATE TABLE {} (id int primary key)").format(q(table)))
        with pytest.raises(errors.UniqueViolation):
            with c.pipeline():
                c.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(q(table)))
                c.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(q(table)))
                c.execute("SELECT 1")
        assert c.execute("SELECT 5").fetchone() == (5,)


def test_server_side_named_cursor():
    with connect(autocommit=False) as c:
        with c.cursor(name="drv_cur") as cur:
            cur.itersize = 1000
            cur.execute("SELECT g, repeat('x', 100) FROM generate_series(1, %s) g", [COPY_ROWS])
            n = s = 0
            for row in cur:
                n += 1
                s += row[0]
            assert n == COPY_ROWS and s == COPY_ROWS * (COPY_ROWS + 1) // 2
        c.commit()
        with c.cursor(name="drv_cur2", scrollable=True, withhold=True) as cur:
            cur.execute("SELECT g FROM generate_series(1, 100) g")
            c.commit()  # WITH HOLD: survives the commit
            assert cur.fetchmany(10)[-1] == (10,)
            cur.scroll(50, mode="absolute")
            assert cur.fetchone() == (51,)
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_prepared_statements_and_eviction(table):
    with connect() as c:
        c.prepared_max = 5
        c.execute(sql.SQL("CREATE TABLE {} (id int, v text)").format(q(table)))
        for i in range(20):
            c.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(q(table)), [i, "p"], prepare=True)
            assert c.execute("SELECT %s::int * 2", [i], prepare=True).fetchone() == (2 * i,)
        # many distinct statements, each prepared, evicted past prepared_max (DEALLOCATE)
        for rnd in range(3):
            for k in range(12):
                got = c.execute("SELECT %%s::int + %d" % k, [rnd], prepare=True).fetchone()
                assert got == (rnd + k,)
        assert c.execute(sql.SQL("SELECT count(*) FROM {}").format(q(table)), prepare=True).fetchone() == (20,)
        c.prepare_threshold = 0  # prepare everything from the first run
        for i in range(30):
            assert c.execute("SELECT %s::text || 'x'", [str(i)]).fetchone() == ("%dx" % i,)


@pytest.mark.parametrize("iso", ["READ_COMMITTED", "REPEATABLE_READ", "SERIALIZABLE"])
@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "ro"])
def test_transaction_isolation_and_readonly(table, iso, readonly):
    with connect() as c:
        # same connection: causal consistency is per session
        c.execute(sql.SQL("CREATE TABLE {} (id int)").format(q(table)))
        c.autocommit = False
        c.isolation_level = getattr(psycopg.IsolationLevel, iso)
        c.read_only = readonly
        row = c.execute("SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')").fetchone()
        assert row == (iso.lower().replace("_", " "), "on" if readonly else "off")
        if readonly:
            with pytest.raises(errors.ReadOnlySqlTransaction):
                c.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(q(table)))
            c.rollback()
        else:
            c.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(q(table)))
            assert c.execute(sql.SQL("SELECT count(*) FROM {}").format(q(table))).fetchone() == (1,)
            c.commit()
        assert c.execute("SELECT 1").fetchone() == (1,)
        c.commit()


# ---- session state --------------------------------------------------------------

@pytest.mark.parametrize("stmt,probe,want", SET_FORMS, ids=SET_IDS)
def test_set_follows_session(table, stmt, probe, want):
    with connect() as c:
        c.execute(sql.SQL("CREATE TABLE {} (id int)").format(q(table)))
        c.execute(stmt)
        bad = []
        for i in range(SET_PROBES):
            if i % 5 == 0:  # interleave writes so the session moves between nodes
                c.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(q(table)), [i])
            got = c.execute(probe).fetchone()[0]
            if got != want:
                bad.append((i, got))
        assert bad == [], "%s lost after: %r" % (stmt, bad[:5])
