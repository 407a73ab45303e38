// WebSocket servers built on the `ws` package, as real Node services write them, for the
// interop tests in tests/tests/suite/interop_node_ws.rs.
//
//   node server.mjs --mode MODE [--interval MS]
//
// Listens on 127.0.0.1 on a free port and reports what happens as JSON lines on stdout, the
// first one being {"event":"listening","port":N}. Modes:
//
//   heartbeat     The heartbeat from the ws README: every --interval, terminate() each client
//                 that did not answer the previous ping, then ping every client.
//   ticks         autoPong: false (ping frames are never answered); sends {"tick":N} to each
//                 client every --interval.
//   app-ping      autoPong: false and otherwise quiet; answers the text message {"op":"ping"}
//                 with {"op":"pong"} (an application-level heartbeat).
//
// In every mode a text message "echo:TEXT" is answered with TEXT. The process exits when its
// standard input closes, so it never outlives the test that started it.

import { WebSocketServer } from 'ws';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const mode = arg('mode', 'heartbeat');
const interval = Number(arg('interval', '500'));
if (!['heartbeat', 'ticks', 'app-ping'].includes(mode) || !(interval > 0)) {
  console.error(`usage: node server.mjs --mode heartbeat|ticks|app-ping [--interval MS]`);
  process.exit(2);
}

function report(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  autoPong: mode === 'heartbeat',
});

let connections = 0;

// The canonical heartbeat, as in the ws README ("How to detect and close broken connections?").
function heartbeat() {
  this.isAlive = true;
  report('pong', { client: this.n });
}

wss.on('connection', function connection(ws) {
  connections += 1;
  ws.n = connections;
  ws.isAlive = true;
  report('connection', { client: ws.n });
  ws.on('error', (e) => report('error', { client: ws.n, message: String(e) }));
  ws.on('pong', heartbeat);
  ws.on('ping', () => report('ping', { client: ws.n }));
  ws.on('close', (code) => report('close', { client: ws.n, code }));
  ws.on('message', (data, isBinary) => {
    const text = isBinary ? null : data.toString();
    if (mode === 'app-ping' && text === '{"op":"ping"}') {
      report('app-ping', { client: ws.n });
      ws.send('{"op":"pong"}');
      return;
    }
    if (text !== null && text.startsWith('echo:')) {
      ws.send(text.slice('echo:'.length));
    }
    report('message', { client: ws.n, binary: isBinary, data: text });
  });
});

let ticks = 0;
const timer = setInterval(function tick() {
  if (mode === 'heartbeat') {
    wss.clients.forEach(function each(ws) {
      if (ws.isAlive === false) {
        report('terminate', { client: ws.n });
        return ws.terminate();
      }
      ws.isAlive = false;
      ws.ping();
    });
  } else if (mode === 'ticks') {
    ticks += 1;
    wss.clients.forEach((ws) => ws.send(JSON.stringify({ tick: ticks })));
  }
}, interval);

wss.on('listening', () => report('listening', { port: wss.address().port }));
wss.on('close', () => clearInterval(timer));

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
