"""libpq's large-object API through psql (\\lo_import / \\lo_export use FunctionCall messages)."""
import os
import subprocess

import pytest

from conftest import psql_env

PSQL = os.environ.get("PALISADE_PSQL", "psql")


# Each psql call has its own deadline, well inside the test's pytest-timeout, so a
# hang fails here (psql is killed) rather than by SIGALRM somewhere in pytest.
def psql(*args, timeout=15):
    hung = False
    try:
        return subprocess.run([PSQL, "-X", "-v", "ON_ERROR_STOP=1", *args], env=psql_env(), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        hung = True
    if hung:  # outside the except block: no chained subprocess traceback
        pytest.fail("psql %r hung: no answer within %ds" % (args, timeout))


@pytest.mark.deadline(120)
def test_psql_lo_import_export_unlink(tmp_path):
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    payload = os.urandom(2 * 1024 * 1024 + 17)
    src.write_bytes(payload)
    r = psql("-c", "\\lo_import %s" % src)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("lo_import "), r.stdout
    oid = int(r.stdout.split()[1])
    r = psql("-c", "\\lo_export %d %s" % (oid, dst))
    assert r.returncode == 0, r.stderr
    assert dst.read_bytes() == payload
    r = psql("-c", "\\lo_unlink %d" % oid)
    assert r.returncode == 0, r.stderr
    r = psql("-At", "-c", "SELECT count(*) FROM pg_largeobject_metadata WHERE oid = %d" % oid)
    assert r.stdout.strip() == "0"


@pytest.mark.deadline(120)
def test_psql_big_literal_from_file(tmp_path):
    f = tmp_path / "big.sql"
    f.write_text("SELECT length('" + "x" * 1_000_000 + "');\n")
    r = psql("-At", "-f", str(f))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1000000"
