'use strict'
// pg-copy-streams (COPY in/out of 100k rows) and pg-cursor through Palisade.
const { test } = require('node:test')
const assert = require('node:assert/strict')
const { Readable, Writable } = require('node:stream')
const { pipeline } = require('node:stream/promises')
const copy = require('pg-copy-streams')
const Cursor = require('pg-cursor')
const { TIMEOUT, COPY_ROWS, connect, uniqueTable, drop, close, primaryConfig, pg } = require('./common')

function t(name, fn) {
  test(name, { timeout: TIMEOUT }, async () => {
    const table = uniqueTable()
    let c
    try {
      c = await connect()
      await fn(c, table)
    } finally {
      await close(c)
      await drop(table)
    }
  })
}

t('COPY 100k rows in and out with pg-copy-streams', async (c, table) => {
  await c.query(`CREATE TABLE "${table}" (id int, v text)`)
  function* rows() {
    for (let i = 0; i < COPY_ROWS; i += 1000) {
      let chunk = ''
      for (let j = i; j < i + 1000; j++) chunk += `${j}\trow ${j}\n`
      yield chunk
    }
  }
  const ingest = c.query(copy.from(`COPY "${table}" (id, v) FROM STDIN`))
  await pipeline(Readable.from(rows()), ingest)
  assert.equal(ingest.rowCount, COPY_ROWS)
  const r = await c.query(`SELECT count(*)::int AS n, sum(id)::bigint AS s FROM "${table}"`)
  assert.equal(r.rows[0].n, COPY_ROWS)
  assert.equal(r.rows[0].s, String((COPY_ROWS * (COPY_ROWS - 1)) / 2))
  let lines = 0
  const out = c.query(copy.to(`COPY "${table}" TO STDOUT`))
  await pipeline(out, new Writable({
    write(chunk, _enc, cb) { for (const b of chunk) if (b === 10) lines++; cb() },
  }))
  assert.equal(lines, COPY_ROWS)
  assert.equal((await c.query('SELECT 1 AS x')).rows[0].x, 1)
  if (primaryConfig) {
    const p = new pg.Client(primaryConfig)
    await p.connect()
    try {
      assert.equal((await p.query(`SELECT count(*)::int AS n FROM "${table}"`)).rows[0].n, COPY_ROWS)
    } finally {
      await p.end()
    }
  }
})

t('COPY FROM with a 1 MB chunk (a single large CopyData)', async (c, table) => {
  await c.query(`CREATE TABLE "${table}" (v text)`)
  const line = 'z'.repeat(1024 * 1024) + '\n'
  const ingest = c.query(copy.from(`COPY "${table}" FROM STDIN`))
  await pipeline(Readable.from([Buffer.from(line)]), ingest)
  assert.equal((await c.query(`SELECT length(v) AS n FROM "${table}"`)).rows[0].n, 1024 * 1024)
})

t('pg-cursor reads 100k rows in batches', async (c) => {
  const cur = c.query(new Cursor('SELECT g FROM generate_series(1, $1::int) g', [COPY_ROWS]))
  let n = 0
  let sum = 0
  for (;;) {
    const rows = await cur.read(1000)
    if (rows.length === 0) break
    n += rows.length
    for (const r of rows) sum += r.g
  }
  await cur.close()
  assert.equal(n, COPY_ROWS)
  assert.equal(sum, (COPY_ROWS * (COPY_ROWS + 1)) / 2)
  assert.equal((await c.query('SELECT 1 AS x')).rows[0].x, 1)
})

t('pg-cursor inside a transaction, then a write', async (c, table) => {
  await c.query(`CREATE TABLE "${table}" (id int)`)
  await c.query(`INSERT INTO "${table}" SELECT generate_series(1, 5000)`)
  await c.query('BEGIN')
  const cur = c.query(new Cursor(`SELECT id FROM "${table}" ORDER BY id`))
  const first = await cur.read(10)
  assert.equal(first[9].id, 10)
  await cur.close()
  await c.query(`INSERT INTO "${table}" VALUES (0)`)
  await c.query('COMMIT')
  assert.equal((await c.query(`SELECT count(*)::int AS n FROM "${table}"`)).rows[0].n, 5001)
})

t('pg-cursor read followed by a write outside a transaction', async (c, table) => {
  await c.query(`CREATE TABLE "${table}" (id int)`)
  const cur = c.query(new Cursor('SELECT g FROM generate_series(1, 100) g'))
  assert.equal((await cur.read(10)).length, 10)
  await cur.close()
  await c.query(`INSERT INTO "${table}" VALUES (1)`)
  assert.equal((await c.query(`SELECT count(*)::int AS n FROM "${table}"`)).rows[0].n, 1)
})
