// IngestService.Append from Node: one stream of records, stored exactly once whatever happens to
// the connection or the server. The protocol (docs/streaming.md): open {stream_id} -> opened
// {committed_offset, limits}; batch {offset, records} -> one ack per batch, in order, sent after
// the batch committed. On any disconnect: reopen, read committed_offset, resend from there the
// records not yet acked, unchanged and at the same offsets; the server answers a batch it already
// holds ALREADY_STORED instead of storing it twice.
'use strict';

const grpc = require('@grpc/grpc-js');
const { errorDetails, isRetryable } = require('./errors');

// A failure of the stream that is not a ServiceError: the call ended without a status error,
// the server drained, or the server answered something this client did not expect.
class StreamEnded extends Error {
  constructor(message, { code = grpc.status.UNAVAILABLE, reason = '', immediate = false } = {}) {
    super(message);
    this.info = { code, codeName: grpc.status[code], message, reason, retryDelayMs: null };
    this.immediate = immediate; // reconnect at once (a drain), without backoff
  }
}

// int64 fields arrive as strings (longs: String), and zero values not at all (defaults: false).
// Offsets stay far below 2^53, so a Number holds them exactly.
const int64 = (v) => Number(v ?? 0);

function varintSize(n) {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    size += 1;
  }
  return size;
}

// Sizes records as the server measures a batch (AppendBatch's encoded size, checked against
// max_batch_bytes), with the same protobufjs encoding @grpc/proto-loader will send.
class BatchSizer {
  constructor(root) {
    this.Record = root.lookupType('turnstream.v1.Record');
  }

  // Bytes one record adds to an AppendBatch: its encoding, its length prefix and the field tag.
  recordBytes(record) {
    const n = this.Record.encode(this.Record.fromObject(record)).finish().length;
    return 1 + varintSize(n) + n;
  }
}

// The largest offset field (tag + a 10-byte varint) an AppendBatch can carry besides records.
const BATCH_OVERHEAD = 11;

// batchLength(sizes, start, limits) -> how many records from sizes[start] fit in one batch under
// max_batch_records and max_batch_bytes.
function batchLength(sizes, start, limits) {
  let bytes = BATCH_OVERHEAD;
  let count = 0;
  while (start + count < sizes.length && count < limits.max_batch_records) {
    if (bytes + sizes[start + count] > limits.max_batch_bytes) break;
    bytes += sizes[start + count];
    count += 1;
  }
  return count;
}

// The messages of one call, read in order; after the last one, the reason the call ended.
function inbox(call) {
  const messages = [];
  let ended = null;
  let wake = null;
  const poke = () => {
    if (wake) wake();
    wake = null;
  };
  call.on('data', (msg) => {
    messages.push(msg);
    poke();
  });
  // grpc-js emits 'error' for a non-OK status, then 'status' in every case; 'end' may come
  // before 'error', and taking it for an OK end would retry a final error (STREAM_FENCED).
  call.on('error', (err) => {
    ended = ended || err;
    poke();
  });
  call.on('status', () => {
    ended = ended || new StreamEnded('the server ended the call');
    poke();
  });
  return async () => {
    while (messages.length === 0 && !ended) await new Promise((resolve) => (wake = resolve));
    if (messages.length > 0) return messages.shift();
    throw ended;
  };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class AppendStream {
  // client: an IngestService client; root: the protobufjs Root of protos.js; streamId: one per
  // execution is typical. onEvent receives {event: 'opened' | 'ack' | 'reconnect', ...} to log.
  constructor(client, root, streamId, options = {}) {
    this.client = client;
    this.root = root;
    this.streamId = streamId;
    this.sizer = new BatchSizer(root);
    this.metadata = options.metadata || new grpc.Metadata();
    this.initialBackoffMs = options.initialBackoffMs ?? 100;
    this.maxBackoffMs = options.maxBackoffMs ?? 5000;
    this.maxReconnectMs = options.maxReconnectMs ?? 60_000; // without progress, then give up
    this.onEvent = options.onEvent || (() => {});
    this.call = null;
    this.read = null;
    this.heartbeats = null;
    this.lastSent = 0;
    this.limits = null;
    this.committed = 0; // the stream's committed offset, as last heard from the server
    this.nextOffset = null; // offset of the next record written; set by the first open
    this.reconnects = 0;
    this.failure = null;
  }

  // Appends records ({turn}, {tool_call}, {task} or {execution} objects) at the next offsets and
  // resolves once every one of them is committed, with the rejections of the invalid ones:
  // [{offset, kind, violations}]. A rejected record still takes its offset and is kept by the
  // server in rejected_records. Rejects with the final error (see isRetryable) or after
  // maxReconnectMs without progress.
  async write(records) {
    if (this.failure) throw this.failure;
    if (records.length === 0) return [];
    if (this.nextOffset === null) await this.guard(() => this.retrying(() => this.open()));
    // Encoding every record now also catches what protobufjs cannot encode (a string where a
    // number belongs, ...) before anything is sent, instead of as an INTERNAL error mid-stream.
    const sizes = records.map((r) => this.sizer.recordBytes(r));
    const tooLarge = sizes.findIndex((s) => s + BATCH_OVERHEAD > this.limits.max_batch_bytes);
    if (tooLarge >= 0) {
      throw new RangeError(
        `record ${tooLarge} is ${sizes[tooLarge]} bytes, more than the server's ` +
          `max_batch_bytes (${this.limits.max_batch_bytes}): it can never be sent`,
      );
    }
    const first = this.nextOffset;
    this.nextOffset += records.length;
    const rejections = [];
    await this.guard(() =>
      this.retrying(async () => {
        if (!this.call) await this.open();
        await this.send(records, sizes, first, rejections);
      }),
    );
    return rejections;
  }

  // A final failure leaves this stream's offsets unknown: every later write fails with it too.
  async guard(fn) {
    try {
      return await fn();
    } catch (err) {
      this.failure = err;
      this.drop();
      throw err;
    }
  }

  // Half-closes the stream: the server answers what it read (nothing: write() waited for every
  // ack) and ends the call with OK.
  async close() {
    const { call, read } = this;
    this.stopHeartbeats();
    this.call = null;
    if (!call) return;
    call.end();
    try {
      for (;;) await read();
    } catch {
      // The end of the call, OK or not: nothing un-acked is left either way.
    }
  }

  async open() {
    const call = this.client.Append(this.metadata);
    const read = inbox(call);
    try {
      call.write({ open: { stream_id: this.streamId } });
      const msg = await read();
      if (msg.kind !== 'opened') {
        throw new StreamEnded(`expected opened, got ${msg.kind}`, { code: grpc.status.INTERNAL });
      }
      const committed = int64(msg.opened.committed_offset);
      if (this.nextOffset === null) {
        this.nextOffset = committed; // a stream written before (by an earlier run) continues
      } else if (committed > this.nextOffset) {
        throw new StreamEnded(
          `stream ${this.streamId} is at ${committed}, past what this writer sent ` +
            `(${this.nextOffset}): another writer is using it`,
          { code: grpc.status.ABORTED, reason: 'STREAM_AHEAD' },
        );
      }
      const limits = msg.opened.limits || {};
      this.limits = {
        max_batch_records: limits.max_batch_records || 1,
        max_batch_bytes: int64(limits.max_batch_bytes),
        max_inflight_batches: limits.max_inflight_batches || 1,
        heartbeat_ms: limits.heartbeat_interval
          ? int64(limits.heartbeat_interval.seconds) * 1000 +
            (limits.heartbeat_interval.nanos || 0) / 1e6
          : 30_000,
      };
      this.committed = committed;
      this.call = call;
      this.read = read;
      this.startHeartbeats();
      this.onEvent({ event: 'opened', committed_offset: committed });
    } catch (err) {
      call.cancel();
      throw err;
    }
  }

  async send(records, sizes, first, rejections) {
    const end = first + records.length;
    // Records below the committed offset were stored before a disconnect lost their ack.
    let sent = Math.max(first, this.committed);
    let inflight = 0;
    while (this.committed < end) {
      // Pipelining: up to max_inflight_batches batches wait for their ack; the server reads no
      // more than that, so waiting for acks here is the backpressure.
      while (sent < end && inflight < this.limits.max_inflight_batches) {
        const count = batchLength(sizes, sent - first, this.limits);
        const batch = records.slice(sent - first, sent - first + count);
        this.call.write({ batch: { offset: sent, records: batch } });
        this.lastSent = Date.now();
        inflight += 1;
        sent += count;
      }
      const ack = await this.nextAck();
      inflight -= 1;
      if (ack.outcome === 'APPEND_OUTCOME_GAP') {
        // The server holds less than we thought: reopen, which reads the committed offset.
        throw new StreamEnded(`gap at offset ${int64(ack.offset)}`, { immediate: true });
      }
      // APPENDED or ALREADY_STORED (a resent batch the server had committed): both are success.
      this.committed = Math.max(this.committed, int64(ack.committed_offset));
      this.onEvent({
        event: 'ack',
        offset: int64(ack.offset),
        outcome: ack.outcome,
        committed_offset: this.committed,
      });
      for (const r of ack.rejections || []) {
        rejections.push({
          offset: int64(ack.offset) + (r.index || 0),
          kind: r.kind,
          violations: r.violations || [],
        });
      }
    }
  }

  async nextAck() {
    for (;;) {
      const msg = await this.read();
      if (msg.kind === 'ack') return msg.ack;
      if (msg.kind === 'drain') {
        // The server is shutting down after answering everything it read: resume elsewhere now.
        throw new StreamEnded(`the server drains: ${msg.drain.reason}`, { immediate: true });
      }
      if (msg.kind !== 'heartbeat') {
        throw new StreamEnded(`unexpected ${msg.kind}`, { code: grpc.status.INTERNAL });
      }
    }
  }

  // Runs attempt() until it succeeds, reconnecting after retryable failures with full-jitter
  // backoff (never shorter than the server's RetryInfo), for up to maxReconnectMs without progress.
  async retrying(attempt) {
    let failures = 0;
    let since = Date.now();
    let committed = this.committed;
    for (;;) {
      try {
        return await attempt();
      } catch (err) {
        const info = err.info || errorDetails(this.root, err);
        this.drop();
        if (this.committed > committed) {
          // Acks arrived before this failure: a fresh outage, a fresh budget.
          failures = 0;
          since = Date.now();
          committed = this.committed;
        }
        if (!isRetryable(info) || Date.now() - since > this.maxReconnectMs) {
          err.info = info;
          throw err;
        }
        const cap = Math.min(this.maxBackoffMs, this.initialBackoffMs * 2 ** failures);
        const delay = err.immediate ? 0 : Math.max(info.retryDelayMs || 0, Math.random() * cap);
        failures += 1;
        this.reconnects += 1;
        this.onEvent({
          event: 'reconnect',
          code: info.codeName,
          reason: info.reason,
          committed_offset: this.committed,
          delay_ms: Math.round(delay),
        });
        await sleep(delay);
      }
    }
  }

  drop() {
    this.stopHeartbeats();
    if (this.call) this.call.cancel();
    this.call = null;
    this.read = null;
  }

  // Proxies (Envoy: 5 minutes) close streams that carry nothing; a worker that pauses between
  // writes longer than heartbeat_interval sends a heartbeat instead of losing its stream.
  startHeartbeats() {
    const every = this.limits.heartbeat_ms;
    this.lastSent = Date.now();
    this.heartbeats = setInterval(() => {
      if (this.call && Date.now() - this.lastSent >= every) {
        this.call.write({ heartbeat: {} });
        this.lastSent = Date.now();
      }
    }, every / 2);
    this.heartbeats.unref(); // never keep the process alive for heartbeats alone
  }

  stopHeartbeats() {
    clearInterval(this.heartbeats);
    this.heartbeats = null;
  }
}

module.exports = { AppendStream, BatchSizer, batchLength };
