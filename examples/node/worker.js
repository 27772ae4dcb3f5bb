#!/usr/bin/env node
// A worker reporting one simulated agent run to turnstream: the execution and a task by unary
// Write, an invalid turn to show the error details, then every turn and tool call over an Append
// stream that survives server restarts. Prints one JSON object per line, for people and tests.
//
//   npm ci && node worker.js --target 127.0.0.1:50051 --turns 20
'use strict';

const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const { load } = require('./protos');
const { enumName, fromStruct, toStruct, toTimestamp } = require('./convert');
const { errorDetails } = require('./errors');
const { AppendStream } = require('./stream');

const { values: args } = parseArgs({
  options: {
    target: { type: 'string', default: process.env.TURNSTREAM_TARGET || '127.0.0.1:50051' },
    execution: { type: 'string', default: `node-${Date.now()}` },
    turns: { type: 'string', default: '20' },
    chunk: { type: 'string', default: '10' }, // steps per Append write
    'interval-ms': { type: 'string', default: '0' }, // simulated LLM latency per step
  },
});
const executionId = args.execution;
const turns = Number(args.turns);
const chunk = Number(args.chunk);
const intervalMs = Number(args['interval-ms']);

const print = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// gRPC's default reconnect backoff grows to 120 s, which would keep a restarted server unused
// for minutes; keepalive detects a peer that vanished without closing the connection.
const CHANNEL_OPTIONS = {
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 5000,
  'grpc.keepalive_time_ms': 30_000,
};

// Unary calls as promises: grpc-js uses callbacks. A deadline bounds each call.
function unary(client, method, request) {
  const deadline = new Date(Date.now() + 30_000);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

// The records of agent step i (1-based): one turn, and a tool call every fifth step.
function step(i) {
  const turnId = `${executionId}-t${i}`;
  const started = Date.now();
  const records = [
    {
      turn: {
        execution_id: executionId,
        turn_number: i,
        turn_id: turnId,
        model: 'claude-sonnet-4-5',
        model_provider: 'anthropic',
        started_at: toTimestamp(started),
        completed_at: toTimestamp(started + 1500),
        input_tokens: 1000 + i,
        output_tokens: 100 + i,
        cache_read_tokens: i, // int64: a Number is fine below 2^53
        finish_reason: i % 5 === 0 ? 'tool_use' : 'end_turn',
        tools_called_names: i % 5 === 0 ? ['read_file'] : [],
        metrics: toStruct({
          latency_ms: i * 1.5,
          cache_hit: i % 2 === 0,
          label: `turn ${i}`,
          tags: ['a', i],
          nested: { depth: 2, none: null },
        }),
      },
    },
  ];
  if (i % 5 === 0) {
    records.push({
      tool_call: {
        execution_id: executionId,
        turn_id: turnId,
        tool_use_id: `${executionId}-u${i}`,
        tool_name: 'read_file',
        started_at: toTimestamp(started + 1500),
        completed_at: toTimestamp(started + 1520),
        tool_input: toStruct({ path: `src/file_${i}.py`, lines: [1, 2, 3], recursive: false }),
        tool_output: 'ok',
        success: true,
      },
    });
  }
  if (i === Math.ceil(turns / 2)) {
    // Invalid on purpose (no tool_name): answered in the batch's ack, kept as a dead letter.
    records.push({
      tool_call: { execution_id: executionId, tool_use_id: `${executionId}-bad`, started_at: toTimestamp(started) },
    });
  }
  return records;
}

async function main() {
  const { IngestService, root } = load();
  const client = new IngestService(args.target, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
  const startedAt = new Date();

  // 1. Unary Write: partial success, answered after commit. Enums by name, Structs built by
  //    toStruct, times by toTimestamp.
  const written = await unary(client, 'Write', {
    execution: {
      execution_id: executionId,
      workflow_name: 'polyglot-example',
      triggered_by: enumName(root, 'turnstream.v1.TriggerType', 'manual'),
      status: enumName(root, 'turnstream.v1.ExecutionStatus', 'running'),
      started_at: toTimestamp(startedAt),
      source: 'examples/node',
      metadata: toStruct({ language: 'node', attempt: 1, tags: ['example', 'node'], parent: null }),
    },
    tasks: [
      {
        execution_id: executionId,
        task_number: 1,
        task_description: 'stream the turns',
        status: enumName(root, 'turnstream.v1.TaskStatus', 'completed'),
        started_at: toTimestamp(startedAt),
        completed_at: toTimestamp(new Date()),
        result: 'ok',
      },
    ],
  });
  print({ event: 'write', counts: written.counts.total });

  // 2. A call that fails: CreateTurn with an invalid turn ends INVALID_ARGUMENT; the reason and
  //    every field violation are in the google.rpc.Status of the grpc-status-details-bin trailer.
  try {
    await unary(client, 'CreateTurn', { turn: { execution_id: executionId, turn_number: 0 } });
    throw new Error('an invalid turn was accepted');
  } catch (err) {
    if (err.code !== grpc.status.INVALID_ARGUMENT) throw err;
    const info = errorDetails(root, err);
    print({ event: 'invalid_turn', code: info.codeName, reason: info.reason, violations: info.violations });
  }

  // 3. Append: every step's records over one stream, resumed across disconnects.
  const stream = new AppendStream(client, root, executionId, { onEvent: print });
  let pending = [];
  for (let i = 1; i <= turns; i += 1) {
    pending.push(...step(i));
    if (i % chunk === 0 || i === turns) {
      for (const r of await stream.write(pending)) print({ event: 'rejection', ...r });
      pending = [];
      print({ event: 'committed', committed_offset: stream.committed });
    }
    if (intervalMs > 0) await sleep(intervalMs);
  }
  await stream.close();

  // 4. The end of the run, and what the server holds for the stream.
  await unary(client, 'Write', {
    execution: {
      execution_id: executionId,
      status: enumName(root, 'turnstream.v1.ExecutionStatus', 'completed'),
      completed_at: toTimestamp(new Date()),
    },
  });
  const created = await unary(client, 'CreateTurn', {
    turn: {
      execution_id: executionId,
      turn_number: turns + 1,
      model: 'claude-sonnet-4-5',
      started_at: toTimestamp(new Date()),
      input_tokens: 10,
      output_tokens: 5,
      metrics: toStruct({ summary: true }),
    },
  });
  const { committed_offset: committed } = await unary(client, 'GetStream', { stream_id: executionId });
  print({
    event: 'done',
    committed_offset: Number(committed ?? 0),
    reconnects: stream.reconnects,
    // Read back: int64 as strings (longs: String), a Struct through fromStruct.
    summary_turn: { total_tokens: created.turn.total_tokens, metrics: fromStruct(created.turn.metrics) },
  });
  client.close();
}

main().catch((err) => {
  const info = err.info || (err.code !== undefined ? { code: err.code, message: err.details } : {});
  process.stderr.write(`worker failed: ${err.stack || err}\n${JSON.stringify(info)}\n`);
  process.exit(1);
});
