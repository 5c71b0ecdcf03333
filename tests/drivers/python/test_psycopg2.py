"""psycopg2 through Palisade: big values, COPY (copy_expert), NOTIFY, cancel, lobject, named cursors."""
import hashlib
import io
import os
import select
import threading
import time

import psycopg2
import psycopg2.errorcodes
import psycopg2.extensions
import psycopg2.extras
import pytest
from psycopg2 import sql

from conftest import BIG, COPY_ROWS, ROUNDS, SET_FORMS, SET_IDS, SET_PROBES, kwargs, primary_count

# Wait in Python (select) instead of inside libpq, so that the suite's
# SIGALRM can interrupt a hung query: a hang becomes a failure.
psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)


def blocking(fn, seconds=40):
    """Run fn(conn) in a daemon thread, on a connection of its own, with the wait callback off.

    copy_expert and lobject refuse psycopg2's wait callback, so libpq then waits
    inside C where SIGALRM cannot reach it: the deadline is kept here. On a hang
    the main thread must not touch that connection (closing it would block on
    the connection's lock held by the stuck thread); the daemon thread is left.
    """
    box = {}

    def body():
        c = None
        try:
            c = connect()
            box["value"] = fn(c)
        except BaseException as e:  # noqa
            box["error"] = e
        finally:
            if c is not None:
                c.close()

    t = threading.Thread(target=body, daemon=True)
    psycopg2.extensions.set_wait_callback(None)
    try:
        t.start()
        t.join(seconds)
    finally:
        psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)
    if t.is_alive():
        pytest.fail("hung: no answer within %ds" % seconds)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def connect(autocommit=True):
    c = psycopg2.connect(**kwargs())
    c.autocommit = autocommit
    return c


def q(name):
    return sql.Identifier(name)


def one(c, stmt, params=None):
    with c.cursor() as cur:
        cur.execute(stmt, params)
        return cur.fetchone()


def test_text_param_5mb_roundtrip():
    value = "x" * (BIG - 1) + "!"
    c = connect()
    try:
        row = one(c, "SELECT %s::text, length(%s::text)", [value, value])
        assert row[1] == BIG and row[0] == value
    finally:
        c.close()


def test_bytea_param_5mb_roundtrip():
    value = os.urandom(BIG)
    c = connect()
    try:
        row = one(c, "SELECT %s::bytea, md5(%s::bytea)", [psycopg2.Binary(value), psycopg2.Binary(value)])
        assert row[1] == hashlib.md5(value).hexdigest()
        assert bytes(row[0]) == value
    finally:
        c.close()


def test_literal_5mb_simple_query():
    c = connect()
    try:
        assert one(c, "SELECT length('" + "y" * BIG + "')") == (BIG,)
    finally:
        c.close()


def test_row_of_1000_columns(table):
    c = connect()
    try:
        assert list(one(c, "SELECT " + ", ".join("%d AS c%d" % (i, i) for i in range(1000)))) == list(range(1000))
        with c.cursor() as cur:
            cur.execute(sql.SQL("CREATE TABLE {} (" + ", ".join("c%d text" % i for i in range(1000)) + ")").format(q(table)))
            cur.execute(sql.SQL("INSERT INTO {} VALUES (" + ", ".join(["%s"] * 1000) + ")").format(q(table)),
                        ["v%d" % i for i in range(1000)])
        row = one(c, sql.SQL("SELECT * FROM {}").format(q(table)))
        assert len(row) == 1000 and row[999] == "v999"
    finally:
        c.close()


@pytest.mark.deadline(60)
def test_copy_expert_100k_in_and_out(table):
    blocking(lambda c: _copy_expert(c, table))
    assert primary_count(table) in (None, COPY_ROWS)


def _copy_expert(c, table):
    with c.cursor() as cur:
        cur.execute(sql.SQL("CREATE TABLE {} (id int, v text)").format(q(table)))
        data = io.StringIO("".join("%d\trow %d\n" % (i, i) for i in range(COPY_ROWS)))
        cur.copy_expert(sql.SQL("COPY {} (id, v) FROM STDIN").format(q(table)), data)
        assert cur.rowcount == COPY_ROWS
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(q(table)))
        assert cur.fetchone() == (COPY_ROWS,)
        out = io.StringIO()
        cur.copy_expert(sql.SQL("COPY {} TO STDOUT").format(q(table)), out)
        assert out.getvalue().count("\n") == COPY_ROWS
        # copy_from / copy_to, the older API
        out2 = io.StringIO()
        cur.copy_to(out2, table, columns=("id",))
        assert len(out2.getvalue().splitlines()) == COPY_ROWS
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_listen_notify_between_two_connections():
    channel = "drv_ch2_%d" % os.getpid()
    a, b = connect(), connect()
    try:
        with a.cursor() as cur:
            cur.execute("LISTEN " + channel)
        with b.cursor() as cur:
            cur.execute("NOTIFY " + channel + ", 'hi'")
        deadline = time.monotonic() + 15
        while not a.notifies and time.monotonic() < deadline:
            select.select([a], [], [], 1)
            a.poll()
        assert [n.payload for n in a.notifies] == ["hi"]
        assert one(a, "SELECT 1") == (1,)
    finally:
        a.close()
        b.close()


def test_cancel_pg_sleep_then_session_usable():
    c = connect()
    try:
        timer = threading.Timer(1.0, c.cancel)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled) as ei:
            one(c, "SELECT pg_sleep(30)")
        timer.cancel()
        assert ei.value.pgcode == "57014"
        assert time.monotonic() - t0 < 15
        assert one(c, "SELECT 42") == (42,)
    finally:
        c.close()


def test_errors_leave_session_usable(table):
    c = connect()
    try:
        with c.cursor() as cur:
            cur.execute(sql.SQL("CREATE TABLE {} (id int primary key)").format(q(table)))
            cur.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(q(table)))
        cases = [("SELEC 1", "42601"), ("SELECT 1/0", "22012"),
                 (sql.SQL("INSERT INTO {} VALUES (1)").format(q(table)), "23505")]
        # outside a transaction
        for stmt, state in cases:
            with pytest.raises(psycopg2.Error) as ei:
                one(c, stmt)
            assert ei.value.pgcode == state
            assert one(c, "SELECT 7") == (7,)
        # inside a transaction
        c.autocommit = False
        for stmt, state in cases:
            one(c, "SELECT 1")
            with pytest.raises(psycopg2.Error) as ei:
                one(c, stmt)
            assert ei.value.pgcode == state
            with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
                one(c, "SELECT 1")
            c.rollback()
            assert one(c, "SELECT 8") == (8,)
            c.commit()
    finally:
        c.close()


@pytest.mark.deadline(60)
def test_large_object_lobject():
    blocking(_lobject)


def _lobject(c):
    c.autocommit = False
    payload = os.urandom(3 * 1024 * 1024)
    lo = c.lobject(0, "wb")
    oid = lo.oid
    lo.write(payload)
    lo.close()
    c.commit()
    lo = c.lobject(oid, "rb")
    got = lo.read()
    lo.seek(10)
    assert lo.read(5) == payload[10:15]
    lo.close()
    assert got == payload
    c.commit()
    c.lobject(oid, "wb").unlink()
    c.commit()
    assert one(c, "SELECT count(*) FROM pg_largeobject_metadata WHERE oid = %s", [oid]) == (0,)
    c.commit()


def test_write_then_read_200_rounds_one_connection(table):
    c = connect()
    stale = []
    try:
        with c.cursor() as cur:
            cur.execute(sql.SQL("CREATE TABLE {} (id int primary key, v text)").format(q(table)))
            for i in range(ROUNDS):
                cur.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(q(table)), [i, "v%d" % i])
                cur.execute(sql.SQL("SELECT v FROM {} WHERE id = %s").format(q(table)), [i])
                if cur.fetchone() != ("v%d" % i,):
                    stale.append(i)
    finally:
        c.close()
    assert stale == [], "stale reads after own write: %d of %d" % (len(stale), ROUNDS)


def test_two_connections_at_once(table):
    a, b = connect(), connect(autocommit=False)
    try:
        a.cursor().execute(sql.SQL("CREATE TABLE {} (id int)").format(q(table)))
        b.cursor().execute(sql.SQL("INSERT INTO {} VALUES (1)").format(q(table)))
        assert one(a, sql.SQL("SELECT count(*) FROM {}").format(q(table))) == (0,)
        b.commit()
        assert one(a, sql.SQL("SELECT count(*) FROM {}").format(q(table))) == (1,)
    finally:
        a.close()
        b.close()


def test_named_cursor():
    c = connect(autocommit=False)
    try:
        with c.cursor(name="drv_named") as cur:
            cur.itersize = 1000
            cur.execute("SELECT g FROM generate_series(1, %s) g", [COPY_ROWS])
            n = sum(1 for _ in cur)
        assert n == COPY_ROWS
        c.commit()
        assert one(c, "SELECT 1") == (1,)
    finally:
        c.close()


@pytest.mark.parametrize("iso", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "ro"])
def test_transaction_isolation_and_readonly(table, iso, readonly):
    c = connect()
    try:
        c.cursor().execute(sql.SQL("CREATE TABLE {} (id int)").format(q(table)))
        c.autocommit = False
        c.set_session(isolation_level=iso, readonly=readonly)
        assert one(c, "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')") == (
            iso.lower(), "on" if readonly else "off")
        if readonly:
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                c.cursor().execute(sql.SQL("INSERT INTO {} VALUES (1)").format(q(table)))
            c.rollback()
        else:
            c.cursor().execute(sql.SQL("INSERT INTO {} VALUES (1)").format(q(table)))
            c.commit()
        assert one(c, "SELECT 1") == (1,)
        c.commit()
    finally:
        c.close()


@pytest.mark.parametrize("stmt,probe,want", SET_FORMS, ids=SET_IDS)
def test_set_follows_session(table, stmt, probe, want):
    c = connect()
    try:
        cur = c.cursor()
        cur.execute(sql.SQL("CREATE TABLE {} (id int)").format(q(table)))
        cur.execute(stmt)
        bad = []
        for i in range(SET_PROBES):
            if i % 5 == 0:
                cur.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(q(table)), [i])
            cur.execute(probe)
            got = cur.fetchone()[0]
            if got != want:
                bad.append((i, got))
        assert bad == [], "%s lost after: %r" % (stmt, bad[:5])
    finally:
        c.close()
