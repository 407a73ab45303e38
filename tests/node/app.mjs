// An app with a plain WebSocket client (the `ws` package), driven by a test.
//
//   node app.mjs URL [--header NAME:VALUE]... [--origin ORIGIN] [--brief 1] [--no-pong 1]
//
// A URL `ws+unix:///path/to.sock:/NAME` goes over a Unix socket. Reports what happens as
// JSON lines on stdout:
//   {"event":"open"}
//   {"event":"refused","status":503,"retry_after":"2","body":"..."}
//   {"event":"message","binary":false,"data":"..."}   (binary: "data_b64")
//                    (with --brief: "len" and the first 16 characters as "head")
//   {"event":"close","code":1012,"reason":"..."}
//   {"event":"error","message":"..."}
//   {"event":"paused"}  {"event":"resumed"}             (when a command took effect)
// and takes commands as JSON lines on stdin:
//   {"send":"text"}  {"send_b64":"AAE="}  {"pause":true}  {"resume":true}  {"close":true}
// With --no-pong the app does not answer pings (ws's autoPong: false), as a hung app would
// not. While paused the socket is not read (ws's pause()), so the sender sees backpressure. Exits
// when stdin closes.

import { createInterface } from 'node:readline';
import WebSocket from 'ws';

const [url, ...rest] = process.argv.slice(2);
const headers = {};
let origin;
let brief = false;
let autoPong = true;
for (let i = 0; i < rest.length; i += 2) {
  if (rest[i] === '--header') {
    const at = rest[i + 1].indexOf(':');
    headers[rest[i + 1].slice(0, at)] = rest[i + 1].slice(at + 1);
  } else if (rest[i] === '--origin') {
    origin = rest[i + 1];
  } else if (rest[i] === '--brief') {
    brief = true;
  } else if (rest[i] === '--no-pong') {
    autoPong = false;
  }
}

function report(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

const ws = new WebSocket(url, {
  headers,
  origin,
  autoPong,
  handshakeTimeout: 5000,
  perMessageDeflate: false,
});
if (!autoPong) ws.on('ping', () => report('ping'));

ws.on('open', () => report('open'));
ws.on('unexpected-response', (req, res) => {
  let body = '';
  res.on('data', (chunk) => (body += chunk));
  res.on('end', () => {
    report('refused', {
      status: res.statusCode,
      retry_after: res.headers['retry-after'] ?? null,
      body,
    });
    process.exit(0);
  });
});
ws.on('message', (data, isBinary) => {
  if (brief) {
    const head = Buffer.from(data).subarray(0, 16).toString('latin1');
    report('message', { binary: isBinary, len: data.length, head });
  } else if (isBinary) report('message', { binary: true, data_b64: Buffer.from(data).toString('base64') });
  else report('message', { binary: false, data: data.toString('utf8') });
});
ws.on('close', (code, reason) => report('close', { code, reason: reason.toString('utf8') }));
ws.on('error', (e) => report('error', { message: String(e) }));

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const command = JSON.parse(line);
  if ('send' in command) ws.send(command.send);
  else if ('send_b64' in command) ws.send(Buffer.from(command.send_b64, 'base64'));
  else if ('pause' in command) {
    ws.pause();
    report('paused');
  } else if ('resume' in command) {
    ws.resume();
    report('resumed');
  }
  else if ('close' in command) ws.close(1000);
});
lines.on('close', () => process.exit(0));
