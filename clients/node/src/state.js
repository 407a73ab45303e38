// What the client remembers across connections to the daemon, without any I/O (PROTOCOL.md
// section 19.5): what it holds per endpoint and where it is in each endpoint's stream, the
// seam rule of a resume, the sticky sends to repeat on a new connection, the requests waiting
// for one, and the delays between attempts. The Client in index.js performs what these decide.

/** Frame bytes charged to a sticky message besides its data and undo (as the daemon does). */
const STICKY_OVERHEAD = 64;

/**
 * The delays between reconnect attempts: `initial` ms doubling up to `max` ms, each multiplied
 * by a random factor in [0.5, 1.0) so that clients of a restarted daemon do not come back all
 * at once. `random` is injectable for tests.
 */
export class Backoff {
  #base;

  constructor({ initial = 100, max = 1000, random = Math.random } = {}) {
    if (!(initial > 0) || !(max >= initial)) throw new RangeError("the reconnect delays need 0 < initial <= max");
    this.initial = initial;
    this.max = max;
    this.random = random;
    this.#base = initial;
  }

  /** The delay before the next attempt, in ms. */
  next() {
    const base = this.#base;
    this.#base = Math.min(base * 2, this.max);
    return base * (0.5 + 0.5 * this.random());
  }

  /** A connection was re-established: the next outage starts again from `initial`. */
  reset() {
    this.#base = this.initial;
  }
}

/**
 * Per endpoint, what the client holds (the whole endpoint, topics, or both), the last `seq` it
 * received with the epoch that `seq` belongs to, and the seam of a resume in flight.
 *
 * A position's `epoch` is a string (the daemon's epoch), `undefined` when the application gave
 * a `since` without epoch (the daemon's current one), or `null` when it came from a daemon
 * without epochs (it cannot be resumed from).
 */
export class Holdings {
  /** `welcome.epoch` of the current (or last) connection; undefined for a daemon without. */
  epoch = undefined;
  /** endpoint -> {whole: boolean, topics: Map(topic -> last topic_seq)} */
  #held = new Map();
  /** endpoint -> {seq, epoch}: the last seq received (or `first_seq - 1` of the subscribe) */
  #pos = new Map();
  /** endpoint -> {id, since}: the latest subscribe with `since` not answered yet */
  #seams = new Map();

  /** A connection was greeted with `epoch`: returns whether it differs from the previous one. */
  connected(epoch) {
    const changed = epoch === undefined || epoch !== this.epoch;
    this.epoch = epoch;
    this.#seams.clear();
    return changed;
  }

  holds(endpoint) {
    return this.#held.has(endpoint);
  }

  /** The holding of `endpoint`: `{whole, topics}`, or undefined. */
  get(endpoint) {
    return this.#held.get(endpoint);
  }

  /** Adds what a subscribe names: the whole endpoint (`topics` undefined) or those topics. */
  add(endpoint, topics) {
    let held = this.#held.get(endpoint);
    if (!held) {
      held = { whole: false, topics: new Map() };
      this.#held.set(endpoint, held);
    }
    if (topics === undefined) held.whole = true;
    else for (const topic of topics) if (!held.topics.has(topic)) held.topics.set(topic, undefined);
  }

  /**
   * Removes what an unsubscribe names (everything when `topics` is undefined). Returns whether
   * something is still held on the endpoint; when nothing is, its position is forgotten too, so
   * that a later subscription starts afresh.
   */
  remove(endpoint, topics) {
    const held = this.#held.get(endpoint);
    if (held && topics !== undefined) {
      for (const topic of topics) held.topics.delete(topic);
      if (held.whole || held.topics.size > 0) return true;
    }
    this.#held.delete(endpoint);
    this.#pos.delete(endpoint);
    this.#seams.delete(endpoint);
    return false;
  }

  /** Sets where `endpoint` resumes from (the application's own `since`). */
  setPosition(endpoint, since, epoch) {
    this.#pos.set(endpoint, { seq: since, epoch });
  }

  /** `{since, epoch}` to resume `endpoint` from, or undefined if there is nothing to resume. */
  position(endpoint) {
    const pos = this.#pos.get(endpoint);
    if (!pos || pos.epoch === null || this.epoch === undefined) return undefined;
    return { since: pos.seq, epoch: pos.epoch };
  }

  /**
   * The subscribes that restore every holding on a new connection, in order (PROTOCOL.md
   * 19.5): per endpoint one with `since` (and the old epoch) when a position is known, with
   * `topics` when only topics are held; when both are held, the whole one with `since`, then
   * the topics without. `last` marks the final subscribe of each endpoint.
   */
  resubscribes() {
    const out = [];
    for (const [endpoint, held] of this.#held) {
      const from = this.position(endpoint) ?? {};
      const topics = [...held.topics.keys()];
      if (held.whole && topics.length > 0) {
        out.push({ endpoint, fields: { endpoint, ...from }, last: false });
        out.push({ endpoint, fields: { endpoint, topics }, last: true });
      } else {
        const fields = held.whole ? { endpoint, ...from } : { endpoint, topics, ...from };
        out.push({ endpoint, fields, last: true });
      }
    }
    return out;
  }

  /**
   * The subscribe that resumes `endpoint` after a `lagged` (PROTOCOL.md 19.5), or undefined:
   * nothing held, a resume already in flight (its seam covers what the daemon dropped), or no
   * position (nothing received yet, or a daemon without history).
   */
  resume(endpoint) {
    const held = this.#held.get(endpoint);
    const from = this.position(endpoint);
    if (!held || !from || this.#seams.has(endpoint)) return undefined;
    return { endpoint, topics: held.whole ? undefined : [...held.topics.keys()], ...from };
  }

  /** A subscribe with `since` was written as request `id`: the seam rule applies until its reply. */
  openSeam(endpoint, id, since) {
    this.#seams.set(endpoint, { id, since });
  }

  /** Request `id` was answered; ends the seam if it is the latest one of `endpoint`. */
  closeSeam(endpoint, id) {
    if (this.#seams.get(endpoint)?.id === id) this.#seams.delete(endpoint);
  }

  /** The connection ended: no reply will come for any seam. */
  clearSeams() {
    this.#seams.clear();
  }

  /**
   * The `ack` of a subscribe of `endpoint` (with `since`/`sinceEpoch` as sent, `since`
   * undefined for a plain one). A resume in the same epoch keeps `since` as the position, so
   * that `missed` of the next message counts what was not recovered; one from another epoch
   * restarts at `first_seq - 1` (seq and topic_seq restarted). A plain subscribe sets the
   * position only if there was none in this epoch.
   */
  acked(endpoint, ack, since, sinceEpoch) {
    const firstSeq = Number.isSafeInteger(ack.first_seq) ? ack.first_seq : undefined;
    const epoch = this.epoch ?? null;
    const pos = this.#pos.get(endpoint);
    if (since !== undefined && (sinceEpoch === undefined || sinceEpoch === this.epoch)) {
      this.#pos.set(endpoint, { seq: since, epoch });
      return;
    }
    if (since === undefined && pos && pos.epoch === epoch && epoch !== null) return;
    const held = this.#held.get(endpoint);
    if (pos && pos.epoch !== epoch && held) {
      // Another daemon run: topic_seq restarted too.
      for (const topic of held.topics.keys()) held.topics.set(topic, undefined);
    }
    if (firstSeq !== undefined) this.#pos.set(endpoint, { seq: firstSeq - 1, epoch });
    else if (pos && pos.epoch !== epoch) this.#pos.delete(endpoint);
  }

  /** Whether the seam rule discards `msg` (see `message`). */
  discards(msg) {
    const seam = this.#seams.get(msg.endpoint);
    return seam !== undefined && msg.seq > seam.since;
  }

  /**
   * A `message` event. Returns false when the seam rule discards it (a resume of its endpoint
   * is in flight and its seq is after the resume's `since`: the daemon sends it again after
   * the ack). Otherwise records its seq and sets `msg.missed`: the messages missed just before
   * it (the seq gap for the whole endpoint; for topics only, the gap in its topic's topic_seq).
   */
  message(msg) {
    const { endpoint, seq } = msg;
    if (this.discards(msg)) return false;
    const pos = this.#pos.get(endpoint);
    const epoch = this.epoch ?? null;
    const same = pos !== undefined && pos.epoch === epoch;
    let missed = gap(same ? pos.seq : undefined, seq);
    if (Number.isSafeInteger(seq)) {
      if (same) pos.seq = seq; // the hot path: no allocation per message
      else this.#pos.set(endpoint, { seq, epoch });
    }
    const held = this.#held.get(endpoint);
    if (held && !held.whole) {
      missed = 0;
      const { topic, topic_seq: topicSeq } = msg;
      if (typeof topic === "string" && Number.isSafeInteger(topicSeq) && held.topics.has(topic)) {
        missed = gap(held.topics.get(topic), topicSeq);
        held.topics.set(topic, topicSeq);
      }
    }
    msg.missed = missed;
    return true;
  }
}

function gap(last, now) {
  return Number.isSafeInteger(last) && Number.isSafeInteger(now) && now > last + 1 ? now - last - 1 : 0;
}

/** Whether two `data` values are the same message: same kind (text or binary), same content. */
export function sameData(a, b) {
  if (a === undefined || b === undefined || typeof a === "string" || typeof b === "string") return a === b;
  return Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
}

function dataBytes(data) {
  if (data === undefined) return 0;
  return typeof data === "string" ? Buffer.byteLength(data) : data.byteLength;
}

/**
 * The sticky sends the daemon accepted, per endpoint in the order they were sent, to send
 * again on every new connection (they end with the connection to the daemon). An identical
 * one (same data and undo) sent again replaces the earlier one, moving to the end. Bounded per
 * endpoint in count and bytes (data + undo + 64); sends in flight reserve their share.
 */
export class StickyList {
  /** endpoint -> {entries: [{endpoint, data, undo, bytes}], count, bytes} (reservations included) */
  #byEndpoint = new Map();

  constructor({ maxMessages = 1024, maxBytes = 16 * 1024 * 1024 } = {}) {
    this.maxMessages = maxMessages;
    this.maxBytes = maxBytes;
  }

  #slot(endpoint) {
    let slot = this.#byEndpoint.get(endpoint);
    if (!slot) {
      slot = { entries: [], count: 0, bytes: 0 };
      this.#byEndpoint.set(endpoint, slot);
    }
    return slot;
  }

  #find(slot, data, undo) {
    return slot.entries.findIndex((e) => sameData(e.data, data) && sameData(e.undo, undo));
  }

  /**
   * Reserves room for a sticky send about to be made. Returns a token for `release`/`add`, or
   * `{limit, message}` naming the bound it would exceed.
   */
  reserve(endpoint, data, undo) {
    const slot = this.#slot(endpoint);
    const bytes = dataBytes(data) + dataBytes(undo) + STICKY_OVERHEAD;
    const replaced = this.#find(slot, data, undo) >= 0;
    if (!replaced && slot.count + 1 > this.maxMessages) {
      const message = `it would make ${slot.count + 1} sticky messages on ${endpoint}, more than maxSticky (${this.maxMessages}) allows`;
      return { limit: "maxSticky", message };
    }
    if (!replaced && slot.bytes + bytes > this.maxBytes) {
      const message = `it would make ${slot.bytes + bytes} sticky bytes on ${endpoint}, more than maxStickyBytes (${this.maxBytes}) allows`;
      return { limit: "maxStickyBytes", message };
    }
    const token = { endpoint, bytes: replaced ? 0 : bytes, count: replaced ? 0 : 1, live: true };
    slot.count += token.count;
    slot.bytes += token.bytes;
    return token;
  }

  /** Gives a reservation back (the send failed, or its outcome is unknown). */
  release(token) {
    if (!token.live) return;
    token.live = false;
    const slot = this.#slot(token.endpoint);
    slot.count -= token.count;
    slot.bytes -= token.bytes;
  }

  /** The daemon accepted the sticky send reserved by `token`: remember it. */
  add(token, data, undo) {
    this.release(token);
    const slot = this.#slot(token.endpoint);
    const i = this.#find(slot, data, undo);
    if (i >= 0) {
      const [old] = slot.entries.splice(i, 1);
      slot.count -= 1;
      slot.bytes -= old.bytes;
    }
    const bytes = dataBytes(data) + dataBytes(undo) + STICKY_OVERHEAD;
    slot.entries.push({ endpoint: token.endpoint, data, undo, bytes });
    slot.count += 1;
    slot.bytes += bytes;
  }

  /** Forgets one entry (its re-send was refused). */
  remove(entry) {
    const slot = this.#byEndpoint.get(entry.endpoint);
    const i = slot ? slot.entries.indexOf(entry) : -1;
    if (i < 0) return;
    slot.entries.splice(i, 1);
    slot.count -= 1;
    slot.bytes -= entry.bytes;
  }

  /** Every entry, per endpoint in the order sent. */
  entries() {
    return [...this.#byEndpoint.values()].flatMap((slot) => slot.entries);
  }
}

/**
 * Requests waiting for a connection to the daemon, in order, bounded in encoded bytes and in
 * count. An entry that times out is removed, so it is never written.
 */
export class Backlog {
  #items = [];
  #bytes = 0;

  constructor({ maxBytes = 1024 * 1024, maxMessages = 1000 } = {}) {
    this.maxBytes = maxBytes;
    this.maxMessages = maxMessages;
  }

  get length() {
    return this.#items.length;
  }

  get bytes() {
    return this.#bytes;
  }

  /**
   * Appends `item` of `size` bytes. Returns undefined, or `{limit, message}` naming the bound
   * it would exceed (then nothing is added).
   */
  push(item, size) {
    if (this.#items.length + 1 > this.maxMessages) {
      const message = `${this.#items.length} requests already wait for the daemon, the most bufferMessages allows (${this.maxMessages})`;
      return { limit: "bufferMessages", message };
    }
    if (this.#bytes + size > this.maxBytes) {
      const message = `${this.#bytes} bytes already wait for the daemon and this request has ${size}, more than bufferBytes (${this.maxBytes}) allows`;
      return { limit: "bufferBytes", message };
    }
    this.#items.push({ item, size });
    this.#bytes += size;
    return undefined;
  }

  /** Removes `item`; returns whether it was there. */
  remove(item) {
    const i = this.#items.findIndex((e) => e.item === item);
    if (i < 0) return false;
    this.#bytes -= this.#items[i].size;
    this.#items.splice(i, 1);
    return true;
  }

  /** Takes every item, in order. */
  drain() {
    const items = this.#items.map((e) => e.item);
    this.#items = [];
    this.#bytes = 0;
    return items;
  }
}

/** A first-in first-out list whose `shift` does not copy. */
class Fifo {
  #items = [];
  #head = 0;

  get length() {
    return this.#items.length - this.#head;
  }

  push(item) {
    this.#items.push(item);
  }

  peek() {
    return this.#items[this.#head];
  }

  shift() {
    if (this.#head >= this.#items.length) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head] = undefined;
    this.#head += 1;
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }

  /** Keeps the items for which `keep` is true. */
  filter(keep) {
    this.#items = this.#items.slice(this.#head).filter(keep);
    this.#head = 0;
  }
}

/** The smallest bound accepted for the events not taken yet: room for a few ordinary events. */
export const MIN_EVENT_BUFFER_BYTES = 64 * 1024;

/**
 * The events waiting for the application (`events()`, `nextEvent()`), bounded in bytes: each
 * is charged its frame's length. When a new event does not fit, the oldest `message` events
 * are dropped, counted per endpoint and announced by `{type: "lagged", endpoint, dropped,
 * client: true}`, handed out before the next event (the rule the daemon applies to a slow
 * client, PROTOCOL.md section 10). A message that does not fit even with every message gone
 * is dropped itself, with the queued ones of its endpoint (everything announced as dropped is
 * older than what stays). Other events are never dropped: when they alone would exceed the
 * bound, `push` refuses (the application stopped taking events).
 */
export class EventQueue {
  /** `{order, size, event}` of `message` events, oldest first. */
  #data = new Fifo();
  /** `{order, size, event}` of every other event, oldest first. */
  #other = new Fifo();
  #order = 0;
  #bytes = 0;
  #dataBytes = 0;
  /** endpoint -> messages dropped and not yet announced, in order of the first drop. */
  #lagged = new Map();

  constructor({ maxBytes = 32 * 1024 * 1024 } = {}) {
    this.maxBytes = maxBytes;
  }

  /** Events to hand out, the pending `lagged` notices included. */
  get length() {
    return this.#data.length + this.#other.length + this.#lagged.size;
  }

  /** Bytes charged now. */
  get bytes() {
    return this.#bytes;
  }

  /**
   * Queues `event`, charged `size` bytes. Returns undefined, or `{limit, message}` when it is
   * not a message and the events other than messages would exceed the bound (then it is not
   * queued).
   */
  push(event, size) {
    const droppable = event.type === "message";
    const undroppable = this.#bytes - this.#dataBytes;
    if (undroppable + size > this.maxBytes) {
      if (!droppable) {
        const message =
          `the application took no events while ${undroppable} bytes of events other than messages ` +
          `piled up, more than eventBufferBytes (${this.maxBytes}) allows`;
        return { limit: "eventBufferBytes", message };
      }
      let count = 1;
      this.#data.filter((e) => {
        if (e.event.endpoint !== event.endpoint) return true;
        this.#bytes -= e.size;
        this.#dataBytes -= e.size;
        count += 1;
        return false;
      });
      this.#countDrops(event.endpoint, count);
      return undefined;
    }
    while (this.#bytes + size > this.maxBytes && this.#data.length > 0) {
      const oldest = this.#data.shift();
      this.#bytes -= oldest.size;
      this.#dataBytes -= oldest.size;
      this.#countDrops(oldest.event.endpoint, 1);
    }
    const entry = { order: this.#order++, size, event };
    this.#bytes += size;
    if (droppable) {
      this.#dataBytes += size;
      this.#data.push(entry);
    } else {
      this.#other.push(entry);
    }
    return undefined;
  }

  /** The next event: a pending `lagged` notice first, else the oldest; undefined if none. */
  shift() {
    for (const [endpoint, dropped] of this.#lagged) {
      this.#lagged.delete(endpoint);
      return { type: "lagged", endpoint, dropped, client: true };
    }
    const d = this.#data.peek();
    const o = this.#other.peek();
    if (!d && !o) return undefined;
    const entry = d && (!o || d.order < o.order) ? this.#data.shift() : this.#other.shift();
    this.#bytes -= entry.size;
    if (entry === d) this.#dataBytes -= entry.size;
    return entry.event;
  }

  #countDrops(endpoint, count) {
    this.#lagged.set(endpoint, (this.#lagged.get(endpoint) ?? 0) + count);
  }
}
