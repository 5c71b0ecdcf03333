"""SQLAlchemy 2 through Palisade: sync ORM (psycopg 3 and psycopg2) and asyncio ORM (asyncpg)."""
import asyncio
import os

import pytest
from sqlalchemy import Integer, LargeBinary, String, Text, create_engine, func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from conftest import BIG, ROUNDS, url

SYNC_DIALECTS = ["postgresql+psycopg", "postgresql+psycopg2"]


def model(tablename):
    """A fresh declarative model bound to this test's own table."""

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = tablename
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        name: Mapped[str] = mapped_column(String(100))
        body: Mapped[str | None] = mapped_column(Text, nullable=True)
        blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)

    return Base, Item


def sync_engine(dialect):
    return create_engine(url(dialect), pool_size=2, connect_args={"connect_timeout": 10})


@pytest.mark.parametrize("dialect", SYNC_DIALECTS)
def test_sync_orm_crud_and_big_values(table, dialect):
    Base, Item = model(table)
    eng = sync_engine(dialect)
    try:
        Base.metadata.create_all(eng)
        body, blob = "b" * BIG, os.urandom(BIG)
        with Session(eng) as s:
            s.add_all([Item(id=i, name="n%d" % i) for i in range(1, 1001)])
            s.add(Item(id=0, name="big", body=body, blob=blob))
            s.commit()
        with Session(eng) as s:
            assert s.scalar(select(func.count()).select_from(Item)) == 1001
            big = s.get(Item, 0)
            assert big.body == body and big.blob == blob
            s.get(Item, 1).name = "renamed"
            s.commit()
            assert s.scalar(select(Item.name).where(Item.id == 1)) == "renamed"
    finally:
        eng.dispose()


@pytest.mark.parametrize("dialect", SYNC_DIALECTS)
def test_sync_orm_write_then_read_200_rounds(table, dialect):
    Base, Item = model(table)
    eng = sync_engine(dialect)
    try:
        Base.metadata.create_all(eng)
        stale = []
        with Session(eng) as s:
            for i in range(ROUNDS):
                s.add(Item(id=i, name="v%d" % i))
                s.commit()
                if s.scalar(select(Item.name).where(Item.id == i)) != "v%d" % i:
                    stale.append(i)
                s.commit()
        assert stale == []
    finally:
        eng.dispose()


@pytest.mark.parametrize("dialect", SYNC_DIALECTS)
def test_sync_orm_errors_leave_session_usable(table, dialect):
    Base, Item = model(table)
    eng = sync_engine(dialect)
    try:
        Base.metadata.create_all(eng)
        with Session(eng) as s:
            s.add(Item(id=1, name="a"))
            s.commit()
            s.add(Item(id=1, name="dup"))
            with pytest.raises(IntegrityError) as ei:
                s.commit()
            assert getattr(ei.value.orig, "sqlstate", None) or ei.value.orig.pgcode == "23505"
            s.rollback()
            with pytest.raises(ProgrammingError):
                s.execute(text("SELEC 1"))
            s.rollback()
            with pytest.raises(DBAPIError):
                s.execute(text("SELECT 1/0"))
            s.rollback()
            assert s.scalar(select(func.count()).select_from(Item)) == 1
    finally:
        eng.dispose()


@pytest.mark.parametrize("dialect", SYNC_DIALECTS)
@pytest.mark.parametrize("iso", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "ro"])
def test_sync_isolation_and_postgresql_readonly(table, dialect, iso, readonly):
    Base, Item = model(table)
    eng = sync_engine(dialect)
    try:
        Base.metadata.create_all(eng)
        opts = {"isolation_level": iso, "postgresql_readonly": readonly}
        with eng.connect().execution_options(**opts) as conn:
            row = conn.execute(text("SELECT current_setting('transaction_isolation'), "
                                    "current_setting('transaction_read_only')")).one()
            assert tuple(row) == (iso.lower(), "on" if readonly else "off")
            if readonly:
                with pytest.raises(DBAPIError) as ei:
                    conn.execute(Item.__table__.insert().values(id=1, name="x"))
                assert "read-only" in str(ei.value)
                conn.rollback()
            else:
                conn.execute(Item.__table__.insert().values(id=1, name="x"))
                conn.commit()
                assert conn.scalar(select(func.count()).select_from(Item)) == 1
            conn.commit()
    finally:
        eng.dispose()


@pytest.mark.parametrize("dialect", SYNC_DIALECTS)
def test_sync_autocommit_isolation(table, dialect):
    Base, Item = model(table)
    eng = sync_engine(dialect)
    try:
        Base.metadata.create_all(eng)
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for i in range(20):
                conn.execute(Item.__table__.insert().values(id=i, name="x"))
                assert conn.scalar(select(func.count()).select_from(Item)) == i + 1
    finally:
        eng.dispose()


def test_sync_stream_results_server_side_cursor():
    eng = sync_engine("postgresql+psycopg")
    try:
        with eng.connect() as conn:
            res = conn.execution_options(stream_results=True, max_row_buffer=1000).execute(
                text("SELECT g FROM generate_series(1, 100000) g"))
            assert sum(1 for _ in res) == 100000
            conn.commit()
    finally:
        eng.dispose()


# ---- asyncio (asyncpg) ----------------------------------------------------------

def arun(coro):
    return asyncio.run(coro)


def async_engine(**kw):
    return create_async_engine(url("postgresql+asyncpg"), pool_size=2, **kw)


def test_async_orm_crud_write_then_read_and_big_values(table):
    Base, Item = model(table)

    async def body():
        eng = async_engine()
        try:
            async with eng.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            stale = []
            async with AsyncSession(eng) as s:
                for i in range(ROUNDS):
                    s.add(Item(id=i, name="v%d" % i))
                    await s.commit()
                    if await s.scalar(select(Item.name).where(Item.id == i)) != "v%d" % i:
                        stale.append(i)
                    await s.commit()
                big = os.urandom(BIG)
                s.add(Item(id=-1, name="big", blob=big, body="t" * BIG))
                await s.commit()
                got = await s.get(Item, -1)
                assert got.blob == big and len(got.body) == BIG
            assert stale == []
        finally:
            await eng.dispose()
    arun(body())


def test_async_orm_errors_leave_session_usable(table):
    Base, Item = model(table)

    async def body():
        eng = async_engine()
        try:
            async with eng.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            async with AsyncSession(eng) as s:
                s.add(Item(id=1, name="a"))
                await s.commit()
                s.add(Item(id=1, name="dup"))
                with pytest.raises(IntegrityError):
                    await s.commit()
                await s.rollback()
                with pytest.raises(ProgrammingError):
                    await s.execute(text("SELEC 1"))
                await s.rollback()
                assert await s.scalar(select(func.count()).select_from(Item)) == 1
        finally:
            await eng.dispose()
    arun(body())


@pytest.mark.parametrize("iso", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("readonly", [False, True], ids=["rw", "ro"])
def test_async_isolation_and_postgresql_readonly(table, iso, readonly):
    Base, Item = model(table)

    async def body():
        eng = async_engine()
        try:
            async with eng.begin() as conn:
                await conn.run_sync(Base.metadata.create_all)
            async with eng.connect() as conn:
                conn = await conn.execution_options(isolation_level=iso, postgresql_readonly=readonly)
                row = (await conn.execute(text("SELECT current_setting('transaction_isolation'), "
                                               "current_setting('transaction_read_only')"))).one()
                assert tuple(row) == (iso.lower(), "on" if readonly else "off")
                if readonly:
                    with pytest.raises(DBAPIError):
                        await conn.execute(Item.__table__.insert().values(id=1, name="x"))
                    await conn.rollback()
                else:
                    await conn.execute(Item.__table__.insert().values(id=1, name="x"))
                    await conn.commit()
                    assert await conn.scalar(select(func.count()).select_from(Item)) == 1
                    await conn.commit()
        finally:
            await eng.dispose()
    arun(body())


def test_async_stream_server_side_cursor():
    async def body():
        eng = async_engine()
        try:
            async with eng.connect() as conn:
                res = await conn.stream(text("SELECT g FROM generate_series(1, 100000) g"))
                n = 0
                async for _ in res:
                    n += 1
                assert n == 100000
                await conn.commit()
        finally:
            await eng.dispose()
    arun(body())
