'use strict'
// node-postgres (pg) through Palisade: big values, Buffers, binary mode, errors,
// LISTEN/NOTIFY, cancel, consistency, prepared statements, transactions, SET.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const crypto = require('node:crypto')
const { pg, config, TIMEOUT, BIG, ROUNDS, connect, uniqueTable, drop, close, SET_FORMS } = require('./common')

// t(name, fn(client, table)): a fresh client and a unique table name (dropped afterwards).
function t(name, fn, opts = {}) {
  test(name, { timeout: TIMEOUT }, async () => {
    const table = uniqueTable()
    let c
    try {
      c = await connect(opts)
      await fn(c, table)
    } finally {
      await close(c)
      await drop(table)
    }
  })
}

t('text parameter of 5 MB round trip', async (c) => {
  const v = 'x'.repeat(BIG - 1) + '!'
  const r = await c.query('SELECT $1::text AS v, length($1::text) AS n', [v])
  assert.equal(r.rows[0].n, BIG)
  assert.ok(r.rows[0].v === v)
})

t('Buffer (bytea) parameter of 5 MB round trip', async (c) => {
  const v = crypto.randomBytes(BIG)
  const r = await c.query('SELECT $1::bytea AS v, md5($1::bytea) AS h', [v])
  assert.equal(r.rows[0].h, crypto.createHash('md5').update(v).digest('hex'))
  assert.ok(Buffer.compare(r.rows[0].v, v) === 0)
})

t('5 MB result from the server (text and bytea)', async (c) => {
  const r = await c.query(`SELECT repeat('x', $1::int) AS t, decode(repeat('ab', $2::int), 'hex') AS b`, [BIG, BIG / 2])
  assert.equal(r.rows[0].t.length, BIG)
  assert.ok(Buffer.compare(r.rows[0].b, Buffer.alloc(BIG / 2, 0xab)) === 0)
})

t('literal of 5 MB in a simple query', async (c) => {
  const r = await c.query("SELECT length('" + 'y'.repeat(BIG) + "') AS n")
  assert.equal(r.rows[0].n, BIG)
})

// binary: true asks for every result column in binary format; bytea comes back as the raw bytes.
const binaryTypes = {
  getTypeParser: (oid, format) => (format === 'binary' && oid === 17 ? (b) => Buffer.from(b) : pg.types.getTypeParser(oid, format)),
}

t('binary result mode with Buffers', async (c) => {
  // pg-protocol decodes every DataRow field as UTF-8 text, even binary ones: keep the bytes ASCII
  const v = Buffer.from(crypto.randomBytes(1024 * 1024).map((b) => 32 + (b % 95)))
  const r = await c.query({ text: 'SELECT $1::bytea AS v, 42::int4 AS n, md5($1::bytea) AS h', values: [v], types: binaryTypes })
  assert.ok(Buffer.compare(r.rows[0].v, v) === 0)
  assert.equal(r.rows[0].n, 42)
  assert.equal(r.rows[0].h, crypto.createHash('md5').update(v).digest('hex'))
}, { binary: true })

t('row of 1000 columns', async (c, table) => {
  const cols = Array.from({ length: 1000 }, (_, i) => `${i} AS c${i}`).join(', ')
  const r = await c.query({ text: 'SELECT ' + cols, rowMode: 'array' })
  assert.deepEqual(r.rows[0], Array.from({ length: 1000 }, (_, i) => i))
  await c.query(`CREATE TABLE "${table}" (${Array.from({ length: 1000 }, (_, i) => `c${i} int`).join(', ')})`)
  const ph = Array.from({ length: 1000 }, (_, i) => `$${i + 1}`).join(', ')
  await c.query(`INSERT INTO "${table}" VALUES (${ph})`, Array.from({ length: 1000 }, (_, i) => i))
  const r2 = await c.query({ text: `SELECT * FROM "${table}"`, rowMode: 'array' })
  assert.equal(r2.rows[0].length, 1000)
  assert.equal(r2.rows[0][999], 999)
})

test('LISTEN/NOTIFY between two connections', { timeout: TIMEOUT }, async () => {
  const a = await connect()
  const b = await connect()
  try {
    const ch = `drv_nch_${process.pid}`
    const got = []
    const done = new Promise((resolve) => a.on('notification', (m) => { got.push(m.payload); if (got.length === 2) resolve() }))
    await a.query(`LISTEN ${ch}`)
    await b.query(`NOTIFY ${ch}, 'one'`)
    await b.query('SELECT pg_notify($1, $2)', [ch, 'two'])
    await done
    assert.deepEqual(got, ['one', 'two'])
    assert.equal((await a.query('SELECT 1 AS x')).rows[0].x, 1)
  } finally {
    await close(a)
    await close(b)
  }
})

t('cancel of pg_sleep(30) gives 57014 and leaves the session usable', async (c) => {
  const started = Date.now()
  const q = c.query('SELECT pg_sleep(30)')
  await new Promise((r) => setTimeout(r, 1000))
  // pg's own cancel: a CancelRequest with this client's BackendKeyData, sent on a new connection
  const canceller = new pg.Client(config)
  canceller.cancel(c, c.activeQuery)
  await assert.rejects(q, (e) => e.code === '57014')
  assert.ok(Date.now() - started < 15000, 'cancel took too long')
  assert.equal((await c.query('SELECT 42 AS x')).rows[0].x, 42)
})

t('statement_timeout gives 57014 and leaves the session usable', async (c) => {
  await c.query(`SET statement_timeout = '500ms'`)
  await assert.rejects(c.query('SELECT pg_sleep(30)'), (e) => e.code === '57014')
  await c.query('RESET statement_timeout')
  assert.equal((await c.query('SELECT 1 AS x')).rows[0].x, 1)
})

t('errors outside and inside transactions leave the session usable', async (c, table) => {
  await c.query(`CREATE TABLE "${table}" (id int primary key)`)
  await c.query(`INSERT INTO "${table}" VALUES (1)`)
  const cases = [
    ['SELEC 1', [], '42601'],
    ['SELECT 1/0', [], '22012'],
    ['SELECT 1/$1::int', [0], '22012'],
    [`INSERT INTO "${table}" VALUES (1)`, [], '23505'],
    [`INSERT INTO "${table}" VALUES ($1)`, [1], '23505'],
  ]
  for (const [sql, params, code] of cases) {
    await assert.rejects(c.query(sql, params), (e) => e.code === code)
    assert.equal((await c.query('SELECT 7 AS x')).rows[0].x, 7)
    await c.query('BEGIN')
    await c.query('SELECT 1')
    await assert.rejects(c.query(sql, params), (e) => e.code === code)
    await assert.rejects(c.query('SELECT 1'), (e) => e.code === '25P02')
    await c.query('ROLLBACK')
    assert.equal((await c.query('SELECT 8 AS x')).rows[0].x, 8)
  }
  assert.equal((await c.query(`SELECT count(*)::int AS n FROM "${table}"`)).rows[0].n, 1)
})

t('200 write-then-read rounds on one connection see every write', async (c, table) => {
  await c.query(`CREATE TABLE "${table}" (id int primary key, v text)`)
  const stale = []
  for (let i = 0; i < ROUNDS; i++) {
    await c.query(`INSERT INTO "${table}" VALUES ($1, $2)`, [i, `v${i}`])
    const r = await c.query(`SELECT v FROM "${table}" WHERE id = $1`, [i])
    if (r.rows.length !== 1 || r.rows[0].v !== `v${i}`) stale.push(i)
  }
  assert.deepEqual(stale, [], `stale reads after own write: ${stale.length} of ${ROUNDS}`)
})

t('a commit on one connection is read on another, 200 rounds, mostly by replicas', async (c, table) => {
  await c.query(`CREATE TABLE "${table}" (id int primary key, v text)`)
  const d = await connect()
  try {
    const stale = []
    let onReplica = 0
    for (let i = 0; i < ROUNDS; i++) {
      await c.query(`INSERT INTO "${table}" VALUES ($1, $2)`, [i, `v${i}`])
      const r = await d.query(
        `SELECT (SELECT v FROM "${table}" WHERE id = $1) AS v, pg_is_in_recovery() AS replica`, [i])
      if (r.rows[0].v !== `v${i}`) stale.push(i)
      if (r.rows[0].replica) onReplica++
    }
    assert.deepEqual(stale, [], `stale reads after another connection's commit: ${stale.length} of ${ROUNDS}`)
    assert.ok(onReplica > ROUNDS / 2, `replicas served only ${onReplica} of ${ROUNDS} reads`)
  } finally {
    await close(d)
  }
})

t('two connections at once', async (c, table) => {
  await c.query(`CREATE TABLE "${table}" (id int)`)
  const d = await connect()
  try {
    await d.query('BEGIN')
    await d.query(`INSERT INTO "${table}" VALUES (1)`)
    assert.equal((await c.query(`SELECT count(*)::int AS n FROM "${table}"`)).rows[0].n, 0)
    await d.query('COMMIT')
    const work = async (cl, base) => {
      for (let i = 0; i < 100; i++) {
        await cl.query(`INSERT INTO "${table}" VALUES ($1)`, [base + i])
        await cl.query(`SELECT count(*) FROM "${table}"`)
      }
    }
    await Promise.all([work(c, 1000), work(d, 2000)])
    assert.equal((await c.query(`SELECT count(*)::int AS n FROM "${table}"`)).rows[0].n, 201)
  } finally {
    await close(d)
  }
})

t('pipelined queries on one client', async (c, table) => {
  await c.query(`CREATE TABLE "${table}" (id int primary key)`)
  // pg queues these; they are sent back to back
  const ps = []
  for (let i = 0; i < 500; i++) ps.push(c.query(`INSERT INTO "${table}" VALUES ($1)`, [i]))
  ps.push(c.query(`SELECT count(*)::int AS n FROM "${table}"`))
  const res = await Promise.all(ps)
  assert.equal(res[500].rows[0].n, 500)
})

t('named prepared statements', async (c, table) => {
  await c.query(`CREATE TABLE "${table}" (id int, v text)`)
  for (let i = 0; i < 20; i++) {
    await c.query({ name: 'drv_ins', text: `INSERT INTO "${table}" VALUES ($1, $2)`, values: [i, 'p'] })
    const r = await c.query({ name: 'drv_sel', text: 'SELECT $1::int * 2 AS n', values: [i] })
    assert.equal(r.rows[0].n, 2 * i)
  }
  const r = await c.query({ name: 'drv_cnt', text: `SELECT count(*)::int AS n FROM "${table}"` })
  assert.equal(r.rows[0].n, 20)
})

for (const iso of ['READ COMMITTED', 'REPEATABLE READ', 'SERIALIZABLE']) {
  for (const ro of [false, true]) {
    t(`transaction ${iso}${ro ? ' READ ONLY' : ''}`, async (c, table) => {
      await c.query(`CREATE TABLE "${table}" (id int)`)
      await c.query(`BEGIN ISOLATION LEVEL ${iso}${ro ? ' READ ONLY' : ''}`)
      const r = await c.query(`SELECT current_setting('transaction_isolation') AS i, current_setting('transaction_read_only') AS r`)
      assert.deepEqual([r.rows[0].i, r.rows[0].r], [iso.toLowerCase(), ro ? 'on' : 'off'])
      if (ro) {
        await assert.rejects(c.query(`INSERT INTO "${table}" VALUES (1)`), (e) => e.code === '25006')
        await c.query('ROLLBACK')
      } else {
        await c.query(`INSERT INTO "${table}" VALUES (1)`)
        await c.query('COMMIT')
        assert.equal((await c.query(`SELECT count(*)::int AS n FROM "${table}"`)).rows[0].n, 1)
      }
    })
  }
}

for (const [id, stmt, probe, want] of SET_FORMS) {
  t(`SET follows the session: ${id}`, async (c, table) => {
    await c.query(`CREATE TABLE "${table}" (id int)`)
    await c.query(stmt)
    const bad = []
    for (let i = 0; i < 50; i++) {
      if (i % 5 === 0) await c.query(`INSERT INTO "${table}" VALUES ($1)`, [i])
      const v = (await c.query(probe)).rows[0].v
      if (v !== want) bad.push([i, v])
    }
    assert.deepEqual(bad, [], `${stmt} lost`)
  })
}
