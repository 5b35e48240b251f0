// Drive the npm `ooo-client` package against a server and print what it observed as one JSON line.
//
//   node [--experimental-websocket] ooo_client_check.mjs HOST:PORT
//   node [--experimental-websocket] ooo_client_check.mjs --auth HOST:PORT TOKEN
//
// The scenarios follow the package's own browser spec (test/oooClientSpec.js), run in Node: a
// `document` stand-in receives the page-lifecycle listeners the client registers, and Node's
// WebSocket and fetch replace the browser's. Each scenario yields what the client delivered to
// `onmessage` (deep-copied, as the spec does), or {"error": ...}; tests/compat asserts on it.
//
// With --auth, the auth scenarios run instead, against a server with an access policy where TOKEN
// may read secure/* and anonymous requests may only write there: the client offers
// ['bearer', TOKEN] as its sub-protocols, as a page would.
import ooo from 'ooo-client'

globalThis.document ??= new EventTarget()

// ky 0.31 (pinned by ooo-client) assigns `request.duplex = 'half'`, which throws in strict mode
// wherever Request.prototype.duplex is a getter (Node's fetch; current browsers). Let the
// assignment be a no-op: Request bodies here are strings, so it has no effect either way.
const duplex = Object.getOwnPropertyDescriptor(Request.prototype, 'duplex')
if (duplex && !duplex.set) {
  Object.defineProperty(Request.prototype, 'duplex', { ...duplex, set () {} })
}

const auth = process.argv[2] === '--auth'
const resume = process.argv[2] === '--resume'
const [host, token] = process.argv.slice(auth || resume ? 3 : 2)
const copy = (value) => JSON.parse(JSON.stringify(value))
const TIMEOUT_MS = 8000

// Subscribe to `path`, run `act(client)` once open, resolve with the messages once `done(msgs)`.
const watch = (path, { protocols = [], act = async () => {}, done, extra = () => ({}) }) =>
  new Promise((resolve, reject) => {
    const client = ooo(`${host}/${path}`, false, protocols)
    client.reconnectInterval = 50
    const msgs = []
    const timer = setTimeout(() => {
      client.close()
      reject(new Error(`timed out with ${msgs.length} messages: ${JSON.stringify(msgs)}`))
    }, TIMEOUT_MS)
    let opened = 0
    client.onopen = async () => {
      opened += 1
      if (opened === 1) {
        try { await act(client) } catch (err) { reject(err) }
      }
    }
    client.onmessage = (msg) => {
      msgs.push(copy(msg))
      if (done(msgs, client)) {
        clearTimeout(timer)
        client.close()
        resolve({ msgs, ...extra(client) })
      }
    }
    client.onerror = (err) => {
      clearTimeout(timer)
      client.close()
      reject(new Error(`websocket error: ${err && err.message}`))
    }
  })

const http = () => {
  const client = ooo()
  client.httpUrl = `http://${host}`
  return client
}

// Subscribe expecting the server to refuse the upgrade, and report what the page can see.
// ooo-client binds its socket's onerror when it connects (inside ooo()), so a handler set on the
// client afterwards never hears of the first failure; listen on the socket itself. A browser then
// fires close (1006) and ooo-client retries every reconnectInterval; Node 20's WebSocket fires no
// close after a failed handshake, so only the error is certain.
const refused = (url, protocols) => new Promise((resolve, reject) => {
  const client = ooo(url, false, protocols)
  client.reconnectInterval = 60000 // the refusal is what is observed; process.exit ends any retry
  const seen = { opened: false, msgs: [] }
  const timer = setTimeout(() => {
    client.close()
    reject(new Error(`not refused within ${TIMEOUT_MS} ms: ${JSON.stringify(seen)}`))
  }, TIMEOUT_MS)
  client.onopen = () => { seen.opened = true }
  client.onmessage = (msg) => { seen.msgs.push(copy(msg)) }
  client.ws.addEventListener('error', (event) => {
    clearTimeout(timer)
    seen.event = event.type
    // No client.close() here: closing a socket from its own failure makes Node 20 fire the error
    // again, endlessly. Marking the close as wanted is enough to stop ooo-client's retries.
    client.forcedClose = true
    resolve(seen)
  }, { once: true })
})

const scenarios = {
  // One key: empty snapshot, create, update, delete.
  object: () => watch('box', {
    act: async (c) => {
      await c.publish('box', { name: 'a box 🧰' })
      await c.publish('box', { name: 'still a box 💾' })
      await c.unpublish('box')
    },
    done: (msgs) => msgs.length === 4,
  }),
  // A glob: empty list, push, update of the pushed key, single delete.
  list: () => watch('box/*', {
    act: async (c) => {
      const id = await c.publish('box/*', { name: 'something 🧰' })
      await c.publish('box/' + id, { name: 'still something 💾' })
      await c.unpublish('box/' + id)
    },
    done: (msgs) => msgs.length === 4,
  }),
  // Ten pushes, ten updates, one glob delete: 2 * 10 + 2 messages, the last an empty list.
  listDelete: () => watch('things/*', {
    act: async (c) => {
      const ids = []
      for (let i = 0; i < 10; i++) ids.push(await c.publish('things/*', { name: 'name' + i }))
      for (const id of ids) await c.publish('things/' + id, { name: 'name' + id })
      await c.unpublish('things/*')
    },
    done: (msgs) => msgs.length === 22,
  }),
  // The clock stream: decimal nanoseconds, twice.
  time: () => new Promise((resolve, reject) => {
    const client = ooo(host)
    const msgs = []
    const timer = setTimeout(() => { client.close(); reject(new Error('no clock ticks')) }, TIMEOUT_MS)
    client.onmessage = (msg) => {
      msgs.push(msg)
      if (msgs.length === 2) { clearTimeout(timer); client.close(); resolve({ msgs }) }
    }
  }),
  // A dropped connection reconnects with ?v=<last version>; the server owes no frame then.
  reconnect: () => new Promise((resolve, reject) => {
    const client = ooo(`${host}/test`)
    client.reconnectInterval = 50
    const urls = []
    const msgs = []
    const timer = setTimeout(() => { client.close(); reject(new Error('no reconnect')) }, TIMEOUT_MS)
    client.onopen = () => {
      urls.push(client.ws.url)
      if (urls.length === 2) {
        // Give a (wrong) initial frame a chance to arrive before concluding.
        setTimeout(() => { clearTimeout(timer); client.close(); resolve({ urls, msgs }) }, 300)
      }
    }
    client.onmessage = (msg) => {
      msgs.push(copy(msg))
      if (urls.length === 1) client.close(true)
    }
  }),
  // Sub-protocol auth: the client offers ["bearer", token] and must get "bearer" back.
  bearer: () => watch('secure/thing', {
    protocols: ['bearer', 'some-token'],
    done: (msgs) => msgs.length === 1,
    extra: (c) => ({ protocol: c.ws.protocol }),
  }),
  keys: async () => {
    const c = http()
    const keys = [(await c.stats()).keys]
    await c.publish('box', { name: 'a box' })
    keys.push((await c.stats()).keys)
    await c.unpublish('box')
    keys.push((await c.stats()).keys)
    return { keys }
  },
  get: async () => {
    const c = http()
    const items = [await c.get('*')]
    await c.publish('box', { name: 'a box' })
    items.push(await c.get('*'))
    await c.unpublish('box')
    items.push(await c.get('*'))
    await c.publish('box/1/things/1', { name: 'a thing in box 1' })
    items.push(await c.get('box/*/things/*'))
    await c.publish('box/2/things/0', { name: 'a thing in box 2' })
    items.push(await c.get('box/*/things/*'))
    items.push(await c.get('box/2/things/0'))
    return { items }
  },
}

const authScenarios = {
  // The token may read secure/*: a snapshot of the seeded value, then a change written anonymously.
  tokenAllowed: () => {
    const url = `${host}/secure/thing`
    return new Promise((resolve, reject) => {
      const client = ooo(url, false, ['bearer', token])
      const msgs = []
      const timer = setTimeout(() => {
        client.close()
        reject(new Error(`timed out with ${JSON.stringify(msgs)}`))
      }, TIMEOUT_MS)
      client.onopen = async () => {
        try { await http().publish('secure/thing', { name: 'updated' }) } catch (err) { reject(err) }
      }
      client.onmessage = (msg) => {
        msgs.push(copy(msg))
        if (msgs.length === 2) {
          clearTimeout(timer)
          const protocol = client.ws.protocol
          client.close()
          resolve({ msgs, protocol })
        }
      }
      client.onerror = (err) => { clearTimeout(timer); client.close(); reject(new Error(`error: ${err.type}`)) }
    })
  },
  noToken: () => refused(`${host}/secure/thing`, []),
  wrongToken: () => refused(`${host}/secure/thing`, ['bearer', 'wrong-' + token]),
  tokenElsewhere: () => refused(`${host}/other/thing`, ['bearer', token]),
}

// With --resume, against a server keeping an event history, whose res/* holds 100 keys: the client
// drops its connection, 500 writes change 10 of the keys, and it reconnects with ?v=<its version>.
// What each frame was (snapshot or patch, its size) is recorded beside what the client ends with.
const resumeScenarios = {
  resume: () => new Promise((resolve, reject) => {
    const client = ooo(`${host}/res/*`)
    client.reconnectInterval = 60000 // this scenario reconnects by itself, once the writes are done
    const frames = []
    const urls = []
    const data = client._data.bind(client)
    client._data = (event) => {
      const msg = JSON.parse(new TextDecoder().decode(event.data))
      frames.push({ snapshot: msg.snapshot, bytes: event.data.byteLength, ops: msg.snapshot ? 0 : msg.data.length })
      data(event)
    }
    const timer = setTimeout(() => {
      client.close()
      reject(new Error(`timed out after ${written} writes with ${JSON.stringify({ frames, urls })}`))
    }, 4 * TIMEOUT_MS)
    let written = 0
    client.onopen = () => { urls.push(client.ws.url) }
    client.onmessage = async () => {
      try {
        if (frames.length === 1) {
          client.close(true) // as a dropped connection: the client keeps its cache and version
          const c = http()
          for (let n = 0; n < 500; n++) {
            await c.publish(`res/${String((n % 10) * 10).padStart(2, '0')}`, { n, pad: 'x'.repeat(50) })
            written += 1
          }
          client.connect(true) // resumes with ?v=<version>
        } else {
          clearTimeout(timer)
          const state = copy(client.cache)
          client.close()
          resolve({ frames, urls, state, get: await http().get('res/*') })
        }
      } catch (err) { clearTimeout(timer); reject(err) }
    }
  }),
}

const results = {}
for (const [name, run] of Object.entries(auth ? authScenarios : resume ? resumeScenarios : scenarios)) {
  try {
    results[name] = await run()
  } catch (err) {
    results[name] = { error: String(err && err.stack ? err.stack : err) }
  }
}
process.stdout.write(JSON.stringify(results) + '\n')
process.exit(0)
