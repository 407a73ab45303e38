// The golden vectors of proto/vectors: encoding the JSON form gives the file's bytes, and
// decoding the file gives the JSON form back (str stays string, bin stays Uint8Array).

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { FrameDecoder, decodeFrame, defaultSocketPath, encodeFrame, ProtocolError } from "../src/index.js";
import { request, subscribeFields } from "../src/protocol.js";
import { VECTORS_DIR, fromJson, loadVectors } from "../testlib/daemon.js";

const cases = loadVectors();
const read = (c) => new Uint8Array(fs.readFileSync(path.join(VECTORS_DIR, c.file)));

test("the vectors cover both directions", () => {
  assert.deepEqual(new Set(cases.map((c) => c.direction)), new Set(["client", "server"]));
  assert.ok(cases.length >= 30);
});

for (const c of cases) {
  test(`encode ${c.name}`, () => {
    const frame = encodeFrame(fromJson(c.message));
    assert.deepEqual(new Uint8Array(frame), read(c));
  });

  test(`decode ${c.name}`, () => {
    const decoded = decodeFrame(read(c));
    const expected = fromJson(c.message);
    assert.deepEqual(normalise(decoded), expected);
    assert.deepEqual(Object.keys(decoded), Object.keys(expected));
    if ("data" in expected) {
      assert.equal(typeof decoded.data, typeof expected.data);
      assert.equal(decoded.data instanceof Uint8Array, expected.data instanceof Uint8Array);
    }
  });
}

test("the client's resume subscribes are the vectors' bytes", () => {
  for (const name of ["subscribe_since", "subscribe_since_no_epoch", "subscribe_topics_since"]) {
    const c = cases.find((x) => x.name === name);
    const { id, endpoint, topics, since, epoch } = c.message;
    const frame = encodeFrame(request("subscribe", id, subscribeFields(endpoint, topics, since, epoch)));
    assert.deepEqual(new Uint8Array(frame), read(c), name);
  }
  assert.throws(() => subscribeFields("feed", undefined, undefined, "e"), /epoch is only meaningful with since/);
  assert.throws(() => subscribeFields("feed", undefined, -1), /since must be a seq/);
  assert.throws(() => subscribeFields("feed", undefined, 1.5), /since must be a seq/);
  assert.throws(() => subscribeFields("feed", undefined, 1, 7), /epoch must be a string/);
});

// Decoded bin values may be views into the frame; compare them as plain Uint8Arrays.
function normalise(value) {
  if (value instanceof Uint8Array) return new Uint8Array(value);
  if (Array.isArray(value)) return value.map(normalise);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, normalise(v)]));
  }
  return value;
}

test("every frame fed one byte at a time", () => {
  const stream = Buffer.concat(cases.map(read));
  const decoder = new FrameDecoder();
  const out = [];
  for (let i = 0; i < stream.length; i++) out.push(...decoder.push(stream.subarray(i, i + 1)));
  assert.deepEqual(out.map(normalise), cases.map((c) => fromJson(c.message)));
  assert.equal(decoder.buffered, 0);
});

test("an oversized length is rejected before the body arrives", () => {
  const decoder = new FrameDecoder(16);
  assert.throws(() => decoder.push(Buffer.from([0, 0, 0, 17])), ProtocolError);
});

test("default socket discovery follows PROTOCOL.md 2.1", () => {
  const uid = process.geteuid();
  assert.equal(defaultSocketPath({ WSMUX_SOCKET: "/run/x.sock" }, "linux"), "/run/x.sock");
  assert.equal(
    defaultSocketPath({ WSMUX_SOCKET: "", XDG_RUNTIME_DIR: "/run/user/1000" }, "linux"),
    "/run/user/1000/wsmux/wsmuxd.sock",
  );
  assert.equal(
    defaultSocketPath({ XDG_RUNTIME_DIR: "relative", TMPDIR: "/var/tmp" }, "linux"),
    `/var/tmp/wsmux-${uid}/wsmuxd.sock`,
  );
  assert.equal(defaultSocketPath({}, "linux"), `/tmp/wsmux-${uid}/wsmuxd.sock`);
  assert.equal(defaultSocketPath({ USERNAME: "ann" }, "win32"), "\\\\.\\pipe\\wsmuxd-ann");
  assert.equal(defaultSocketPath({}, "win32"), "\\\\.\\pipe\\wsmuxd-default");
});
