"""asyncpg through Palisade: prepare, executemany, COPY, cursors, transactions, statement cache."""
import asyncio
import hashlib
import io
import os

import asyncpg
import pytest

from conftest import (BIG, COPY_ROWS, DB, HOST, PASSWORD, PORT, ROUNDS, SET_FORMS, SET_IDS, SET_PROBES, USER,
                      primary_count)


async def connect(**kw):
    return await asyncpg.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, database=DB, timeout=10, **kw)


def run(coro):
    return asyncio.run(coro)


def qi(name):
    return '"%s"' % name


def test_text_param_5mb_roundtrip():
    async def body():
        c = await connect()
        value = "x" * (BIG - 1) + "?"
        row = await c.fetchrow("SELECT $1::text AS v, length($1::text) AS n", value)
        assert row["n"] == BIG and row["v"] == value
        await c.close()
    run(body())


def test_bytea_param_5mb_roundtrip():
    async def body():
        c = await connect()
        value = os.urandom(BIG)
        row = await c.fetchrow("SELECT $1::bytea AS v, md5($1::bytea) AS h", value)
        assert row["h"] == hashlib.md5(value).hexdigest() and row["v"] == value
        await c.close()
    run(body())


def test_5mb_result_from_server():
    async def body():
        c = await connect()
        row = await c.fetchrow("SELECT repeat('x', $1::int) AS t, decode(repeat('ab', $2::int), 'hex') AS b",
                               BIG, BIG // 2)
        assert len(row["t"]) == BIG and row["b"] == b"\xab" * (BIG // 2)
        await c.close()
    run(body())


def test_literal_5mb_simple_query():
    async def body():
        c = await connect()
        # execute() without arguments uses the simple query protocol
        await c.execute("CREATE TEMP TABLE big_lit AS SELECT length('" + "y" * BIG + "') AS n")
        assert await c.fetchval("SELECT n FROM big_lit") == BIG
        await c.close()
    run(body())


def test_row_of_1000_columns(table):
    async def body():
        c = await connect()
        row = await c.fetchrow("SELECT " + ", ".join("%d AS c%d" % (i, i) for i in range(1000)))
        assert list(row.values()) == list(range(1000))
        await c.execute("CREATE TABLE %s (%s)" % (qi(table), ", ".join("c%d int" % i for i in range(1000))))
        await c.execute("INSERT INTO %s VALUES (%s)" % (qi(table), ", ".join("$%d" % (i + 1) for i in range(1000))),
                        *range(1000))
        row = await c.fetchrow("SELECT * FROM %s" % qi(table))
        assert len(row) == 1000 and row["c999"] == 999
        await c.close()
    run(body())


def test_copy_records_right_after_create_table(table):
    """Issue 11 bug 2: the prepared 'SELECT ... LIMIT 1' must not pin COPY to a replica."""
    async def body():
        c = await connect()
        await c.execute("CREATE TABLE %s (id int, v text)" % qi(table))
        res = await c.copy_records_to_table(table, records=[(i, "r%d" % i) for i in range(COPY_ROWS)],
                                            columns=["id", "v"])
        assert res == "COPY %d" % COPY_ROWS
        assert await c.fetchval("SELECT count(*) FROM %s" % qi(table)) == COPY_ROWS
        await c.close()
    run(body())
    assert primary_count(table) in (None, COPY_ROWS)


def test_copy_from_query_and_to_table_100k(table, table2):
    async def body():
        c = await connect()
        await c.execute("CREATE TABLE %s (id int, v text)" % qi(table))
        await c.execute("CREATE TABLE %s (id int, v text)" % qi(table2))
        await c.execute("INSERT INTO %s SELECT g, 'r' || g FROM generate_series(1, %d) g" % (qi(table), COPY_ROWS))
        buf = io.BytesIO()
        res = await c.copy_from_query("SELECT * FROM %s ORDER BY id" % qi(table), output=buf, format="csv")
        assert res == "COPY %d" % COPY_ROWS
        assert buf.getvalue().count(b"\n") == COPY_ROWS
        buf.seek(0)
        res = await c.copy_to_table(table2, source=buf, format="csv")
        assert res == "COPY %d" % COPY_ROWS
        assert await c.fetchval("SELECT count(*) FROM %s" % qi(table2)) == COPY_ROWS
        out = io.BytesIO()
        await c.copy_from_table(table2, output=out)
        assert out.getvalue().count(b"\n") == COPY_ROWS
        await c.close()
    run(body())


def test_listen_notify_between_two_connections():
    async def body():
        a, b = await connect(), await connect()
        got = asyncio.Queue()
        ch = "drv_ach_%d" % os.getpid()
        await a.add_listener(ch, lambda conn, pid, channel, payload: got.put_nowait(payload))
        await b.execute("NOTIFY %s, 'one'" % ch)
        await b.execute("SELECT pg_notify($1, 'two')", ch)
        assert await asyncio.wait_for(got.get(), 15) == "one"
        assert await asyncio.wait_for(got.get(), 15) == "two"
        assert await a.fetchval("SELECT 1") == 1
        await a.close()
        await b.close()
    run(body())


def test_cancel_by_timeout_then_session_usable():
    async def body():
        c = await connect()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await c.fetchval("SELECT pg_sleep(30)", timeout=1)  # asyncpg sends a CancelRequest
        assert loop.time() - t0 < 15
        assert await c.fetchval("SELECT 42") == 42
        # and a task cancelled mid-query
        task = asyncio.ensure_future(c.execute("SELECT pg_sleep(30)"))
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await c.fetchval("SELECT 43") == 43
        await c.close()
    run(body())


def test_statement_timeout_57014_then_session_usable():
    async def body():
        c = await connect()
        await c.execute("SET statement_timeout = '500ms'")
        with pytest.raises(asyncpg.QueryCanceledError) as ei:
            await c.fetchval("SELECT pg_sleep(30)")
        assert ei.value.sqlstate == "57014"
        await c.execute("RESET statement_timeout")
        assert await c.fetchval("SELECT 1") == 1
        await c.close()
    run(body())


def test_errors_leave_session_usable(table):
    async def body():
        c = await connect()
        await c.execute("CREATE TABLE %s (id int primary key)" % qi(table))
        await c.execute("INSERT INTO %s VALUES (1)" % qi(table))
        cases = [("SELEC 1", (), "42601"), ("SELECT 1/0", (), "22012"), ("SELECT 1/$1::int", (0,), "22012"),
                 ("INSERT INTO %s VALUES (1)" % qi(table), (), "23505"),
                 ("INSERT INTO %s VALUES ($1)" % qi(table), (1,), "23505")]
        for stmt, args, state in cases:
            with pytest.raises(asyncpg.PostgresError) as ei:
                await c.fetch(stmt, *args)
            assert ei.value.sqlstate == state
            assert await c.fetchval("SELECT 7") == 7
            # inside a transaction
            tr = c.transaction()
            await tr.start()
            await c.fetchval("SELECT 1")
            with pytest.raises(asyncpg.PostgresError) as ei:
                await c.fetch(stmt, *args)
            assert ei.value.sqlstate == state
            with pytest.raises(asyncpg.InFailedSQLTransactionError):
                await c.fetchval("SELECT 1")
            await tr.rollback()
            assert await c.fetchval("SELECT 8") == 8
        await c.close()
    run(body())


def test_write_then_read_200_rounds_one_connection(table):
    async def body():
        c = await connect()
        await c.execute("CREATE TABLE %s (id int primary key, v text)" % qi(table))
        stale = []
        for i in range(ROUNDS):
            await c.execute("INSERT INTO %s VALUES ($1, $2)" % qi(table), i, "v%d" % i)
            if await c.fetchval("SELECT v FROM %s WHERE id = $1" % qi(table), i) != "v%d" % i:
                stale.append(i)
        await c.close()
        assert stale == [], "stale reads after own write: %d of %d" % (len(stale), ROUNDS)
    run(body())


def test_two_connections_at_once(table):
    async def body():
        a, b = await connect(), await connect()
        await a.execute("CREATE TABLE %s (id int)" % qi(table))

        async def work(c, base):
            for i in range(100):
                await c.execute("INSERT INTO %s VALUES ($1)" % qi(table), base + i)
                await c.fetchval("SELECT count(*) FROM %s" % qi(table))

        await asyncio.gather(work(a, 0), work(b, 1000))
        assert await a.fetchval("SELECT count(*) FROM %s" % qi(table)) == 200
        await a.close()
        await b.close()
    run(body())


def test_executemany(table):
    async def body():
        c = await connect()
        await c.execute("CREATE TABLE %s (id int primary key, v text)" % qi(table))
        await c.executemany("INSERT INTO %s VALUES ($1, $2)" % qi(table), [(i, str(i)) for i in range(10000)])
        assert await c.fetchval("SELECT count(*) FROM %s" % qi(table)) == 10000
        with pytest.raises(asyncpg.UniqueViolationError):
            await c.executemany("INSERT INTO %s VALUES ($1, $2)" % qi(table), [(20000, "a"), (1, "dup")])
        assert await c.fetchval("SELECT count(*) FROM %s" % qi(table)) == 10000
        await c.close()
    run(body())


def test_cursor_in_transaction():
    async def body():
        c = await connect()
        async with c.transaction():
            n = 0
            async for r in c.cursor("SELECT g FROM generate_series(1, $1::int) g", COPY_ROWS, prefetch=1000):
                n += 1
            assert n == COPY_ROWS
            cur = await c.cursor("SELECT g FROM generate_series(1, 1000) g")
            assert [r["g"] for r in await cur.fetch(5)] == [1, 2, 3, 4, 5]
            await cur.forward(10)
            assert (await cur.fetchrow())["g"] == 16
        assert await c.fetchval("SELECT 1") == 1
        await c.close()
    run(body())


def test_prepare_and_statement_cache_eviction(table):
    async def body():
        c = await connect(statement_cache_size=2)
        await c.execute("CREATE TABLE %s (id int, v text)" % qi(table))
        stmt = await c.prepare("SELECT $1::int + 1 AS n")
        for i in range(20):
            assert await stmt.fetchval(i) == i + 1
        ins = await c.prepare("INSERT INTO %s VALUES ($1, $2)" % qi(table))
        for i in range(20):
            await ins.fetch(i, "p")
        # many distinct statements through a cache of 2: constant eviction (Close of prepared statements)
        for rnd in range(5):
            for k in range(10):
                assert await c.fetchval("SELECT $1::int + %d" % k, rnd) == rnd + k
                await c.execute("INSERT INTO %s VALUES ($1, 'k%d')" % (qi(table), k), rnd)
        assert await c.fetchval("SELECT count(*) FROM %s" % qi(table)) == 70
        # the statement prepared first is still usable after all that eviction
        assert await stmt.fetchval(1) == 2
        await c.close()
    run(body())


@pytest.mark.parametrize("iso", ["read_committed", "repeatable_read", "serializable"])
@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "ro"])
def test_transaction_isolation_and_readonly(table, iso, readonly):
    async def body():
        c = await connect()
        await c.execute("CREATE TABLE %s (id int)" % qi(table))
        async with c.transaction(isolation=iso, readonly=readonly):
            row = await c.fetchrow("SELECT current_setting('transaction_isolation') AS i, "
                                   "current_setting('transaction_read_only') AS r")
            assert (row["i"], row["r"]) == (iso.replace("_", " "), "on" if readonly else "off")
            if not readonly:
                await c.execute("INSERT INTO %s VALUES (1)" % qi(table))
        if readonly:
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                async with c.transaction(isolation=iso, readonly=True):
                    await c.execute("INSERT INTO %s VALUES (1)" % qi(table))
        else:
            assert await c.fetchval("SELECT count(*) FROM %s" % qi(table)) == 1
        assert await c.fetchval("SELECT 1") == 1
        await c.close()
    run(body())


def test_serializable_readonly_deferrable():
    async def body():
        c = await connect()
        async with c.transaction(isolation="serializable", readonly=True, deferrable=True):
            assert await c.fetchval("SELECT current_setting('transaction_deferrable')") == "on"
        await c.close()
    run(body())


@pytest.mark.parametrize("stmt,probe,want", SET_FORMS, ids=SET_IDS)
def test_set_follows_session(table, stmt, probe, want):
    async def body():
        c = await connect()
        await c.execute("CREATE TABLE %s (id int)" % qi(table))
        await c.execute(stmt)
        bad = []
        for i in range(SET_PROBES):
            if i % 5 == 0:
                await c.execute("INSERT INTO %s VALUES ($1)" % qi(table), i)
            got = await c.fetchval(probe)
            if got != want:
                bad.append((i, got))
        await c.close()
        assert bad == [], "%s lost after: %r" % (stmt, bad[:5])
    run(body())
