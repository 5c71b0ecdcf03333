"""Shared connection parameters and fixtures for the driver suite.

Everything comes from the environment (see ../run.sh for the contract):
PALISADE_HOST, PALISADE_PORT, PALISADE_USER, PALISADE_PASSWORD, PALISADE_DB,
and optionally PALISADE_PRIMARY_HOST / PALISADE_PRIMARY_PORT (ground truth:
the primary reached directly, used to drop tables and double-check counts).
"""
import os
import subprocess
import uuid
from urllib.parse import quote

import pytest

try:
    # psycopg2 (directly and under SQLAlchemy) waits in Python (select) instead of
    # inside libpq, so that the suite's SIGALRM deadlines can interrupt a hang.
    import psycopg2.extensions
    import psycopg2.extras

    psycopg2.extensions.set_wait_callback(psycopg2.extras.wait_select)
except ImportError:  # pragma: no cover
    pass

HOST = os.environ.get("PALISADE_HOST", "127.0.0.1")
PORT = int(os.environ.get("PALISADE_PORT", "6432"))
USER = os.environ.get("PALISADE_USER", "postgres")
PASSWORD = os.environ.get("PALISADE_PASSWORD", "")
DB = os.environ.get("PALISADE_DB", "postgres")
PRIMARY_HOST = os.environ.get("PALISADE_PRIMARY_HOST", HOST)
PRIMARY_PORT = int(os.environ["PALISADE_PRIMARY_PORT"]) if os.environ.get("PALISADE_PRIMARY_PORT") else None

# 5 MB values: well past any buffer high-water mark in the proxy.
BIG = 5 * 1024 * 1024
COPY_ROWS = 100_000
ROUNDS = 200


def kwargs(port=None, host=None):
    """libpq-style keyword parameters (psycopg 3, psycopg2)."""
    return dict(
        host=host or HOST,
        port=port or PORT,
        user=USER,
        password=PASSWORD,
        dbname=DB,
        connect_timeout=10,
        application_name="palisade-driver-suite",
    )


def url(scheme="postgresql", port=None):
    return "%s://%s:%s@%s:%d/%s" % (
        scheme, quote(USER, safe=""), quote(PASSWORD, safe=""), HOST, port or PORT, quote(DB, safe=""))


def psql_env(port=None, host=None):
    env = dict(os.environ)
    env.update(PGHOST=host or HOST, PGPORT=str(port or PORT), PGUSER=USER, PGPASSWORD=PASSWORD,
               PGDATABASE=DB, PGCONNECT_TIMEOUT="10", PSQLRC="/dev/null")
    return env


def unique(prefix="drv"):
    return "%s_%s" % (prefix, uuid.uuid4().hex[:12])


def _drop(name):
    """Drop a test table, directly on the primary when we know it, else through the proxy."""
    import psycopg

    if PRIMARY_PORT is not None:
        kw = kwargs(port=PRIMARY_PORT, host=PRIMARY_HOST)
    else:
        kw = kwargs()
    try:
        with psycopg.connect(autocommit=True, **kw) as c:
            c.execute("SET lock_timeout = '2s'")  # a hung session may hold the table's lock
            c.execute('DROP TABLE IF EXISTS "%s"' % name)
    except Exception as e:  # teardown must not hide the test's own failure
        print("drop of %s failed: %r" % (name, e))


@pytest.fixture
def table():
    """A fresh, unique table name; the test creates the table, the fixture drops it."""
    name = unique()
    yield name
    _drop(name)


@pytest.fixture
def table2():
    name = unique()
    yield name
    _drop(name)


def primary_count(name):
    """COUNT(*) of a table read on the primary directly (None when no primary port was given)."""
    if PRIMARY_PORT is None:
        return None
    import psycopg

    with psycopg.connect(autocommit=True, **kwargs(port=PRIMARY_PORT, host=PRIMARY_HOST)) as c:
        return c.execute('SELECT count(*) FROM "%s"' % name).fetchone()[0]


# SET forms that must follow the session to whichever node runs its next statement
# (issue 11, bug 6): (SET statement, probe query, expected value).
SET_FORMS = [
    ("SET TIME ZONE 'UTC'", "SELECT current_setting('TimeZone')", "UTC"),
    ("SET TIME ZONE 'Asia/Tokyo'", "SELECT current_setting('TimeZone')", "Asia/Tokyo"),
    ("SET datestyle TO postgres, dmy", "SELECT current_setting('DateStyle')", "Postgres, DMY"),
    ("SET myapp.tenant = 7", "SELECT current_setting('myapp.tenant')", "7"),
    ("SELECT set_config('myapp.user', 'alice', false)", "SELECT current_setting('myapp.user')", "alice"),
    ("SET search_path TO pg_catalog, public", "SELECT current_setting('search_path')", "pg_catalog, public"),
    ("SET XML OPTION DOCUMENT", "SELECT current_setting('xmloption')", "document"),
]
SET_IDS = ["time_zone_utc", "time_zone_tokyo", "datestyle_list", "custom_placeholder", "set_config",
           "search_path", "xml_option"]
SET_PROBES = 50


# ---- deadlines ------------------------------------------------------------------
# A hang must be a failure, not a stuck suite. pytest-timeout's signal method
# fires once: a driver's cleanup (psycopg's pipeline exit, a pool's rollback)
# then waits on the same hung connection for ever. So each phase of a test
# (setup, call, teardown) gets its own SIGALRM that raises pytest's Failed
# after PALISADE_TEST_TIMEOUT seconds and again every few seconds until the
# phase is over. `@pytest.mark.deadline(s)` gives a test a budget of its own.
# pytest-timeout stays as the last resort (thread method, a much longer limit
# set by run.sh): it dumps every stack and ends the process.
import signal  # noqa: E402

TEST_TIMEOUT = float(os.environ.get("PALISADE_TEST_TIMEOUT", "60"))
HERE = os.path.dirname(os.path.abspath(__file__))
REFIRE = 3.0


def pytest_configure(config):
    config.addinivalue_line("markers", "deadline(seconds): this test's own hang deadline")


def _budget(item):
    m = item.get_closest_marker("deadline")
    return float(m.args[0]) if m else TEST_TIMEOUT


def _armed(item, phase):
    budget = _budget(item)

    def on_alarm(signum, frame):
        where = ""
        f = frame
        while f is not None:  # the innermost line of the suite's own code that is waiting
            if os.path.dirname(os.path.abspath(f.f_code.co_filename)) == HERE:
                where = " at %s:%d" % (os.path.basename(f.f_code.co_filename), f.f_lineno)
                break
            f = f.f_back
        try:  # asyncio: the suite's own coroutine that is waiting
            import asyncio

            loop = asyncio._get_running_loop()
            for task in asyncio.all_tasks(loop) if loop else ():
                for fr in task.get_stack():
                    if os.path.dirname(os.path.abspath(fr.f_code.co_filename)) == HERE:
                        where = " at %s:%d" % (os.path.basename(fr.f_code.co_filename), fr.f_lineno)
        except Exception:  # noqa
            pass
        pytest.fail("hung: %s of %s still running after %.0fs%s" % (phase, item.name, budget, where), pytrace=False)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, budget, REFIRE)
    return old


def _disarm(old):
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    old = _armed(item, "setup")
    try:
        yield
    finally:
        _disarm(old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    old = _armed(item, "call")
    try:
        yield
    finally:
        _disarm(old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    old = _armed(item, "teardown")
    try:
        yield
    finally:
        _disarm(old)
