'use strict'
// Connection parameters from the environment (contract: ../../run.sh).
const crypto = require('node:crypto')
const pg = require('pg')

const env = process.env
const config = {
  host: env.PALISADE_HOST || '127.0.0.1',
  port: Number(env.PALISADE_PORT || 6432),
  user: env.PALISADE_USER || 'postgres',
  password: env.PALISADE_PASSWORD || '',
  database: env.PALISADE_DB || 'postgres',
  connectionTimeoutMillis: 10000,
  application_name: 'palisade-driver-suite-node',
}
const primaryConfig = env.PALISADE_PRIMARY_PORT
  ? { ...config, host: env.PALISADE_PRIMARY_HOST || config.host, port: Number(env.PALISADE_PRIMARY_PORT) }
  : null

// Every test gets this many ms; a hang is a failure, not a stuck suite.
const TIMEOUT = 1000 * Number(env.PALISADE_TEST_TIMEOUT || 60)
const BIG = 5 * 1024 * 1024
const COPY_ROWS = 100000
const ROUNDS = 200

async function connect(extra = {}) {
  const c = new pg.Client({ ...config, ...extra })
  c.on('error', () => {}) // a dropped connection must fail the test, not crash the runner
  await c.connect()
  return c
}

function uniqueTable() {
  return 'drv_' + crypto.randomBytes(6).toString('hex')
}

// Drop a test table, on the primary directly when its port is known, else through the proxy.
async function drop(name) {
  let c
  try {
    c = new pg.Client({ ...(primaryConfig || config) })
    c.on('error', () => {})
    await c.connect()
    await c.query(`SET lock_timeout = '2s'`) // a hung session may hold the table's lock
    await c.query(`DROP TABLE IF EXISTS "${name}"`)
  } catch (e) {
    console.error(`drop of ${name} failed: ${e.message}`)
  } finally {
    if (c) c.end().catch(() => {})
  }
}

// Close a client without waiting for ever on a hung proxy.
function close(c) {
  if (!c) return
  const t = setTimeout(() => c.connection && c.connection.stream && c.connection.stream.destroy(), 2000)
  return c.end().catch(() => {}).finally(() => clearTimeout(t))
}

const SET_FORMS = [
  ['time_zone_utc', `SET TIME ZONE 'UTC'`, `SELECT current_setting('TimeZone') AS v`, 'UTC'],
  ['time_zone_tokyo', `SET TIME ZONE 'Asia/Tokyo'`, `SELECT current_setting('TimeZone') AS v`, 'Asia/Tokyo'],
  ['datestyle_list', `SET datestyle TO postgres, dmy`, `SELECT current_setting('DateStyle') AS v`, 'Postgres, DMY'],
  ['custom_placeholder', `SET myapp.tenant = 7`, `SELECT current_setting('myapp.tenant') AS v`, '7'],
  ['set_config', `SELECT set_config('myapp.user', 'alice', false)`, `SELECT current_setting('myapp.user') AS v`, 'alice'],
  ['search_path', `SET search_path TO pg_catalog, public`, `SELECT current_setting('search_path') AS v`, 'pg_catalog, public'],
  ['xml_option', `SET XML OPTION DOCUMENT`, `SELECT current_setting('xmloption') AS v`, 'document'],
]

module.exports = { pg, config, primaryConfig, TIMEOUT, BIG, COPY_ROWS, ROUNDS, connect, uniqueTable, drop, close, SET_FORMS }
