// JS values -> the object shapes @grpc/proto-loader (protobufjs fromObject) encodes correctly.
// Each helper closes a trap where protobufjs would otherwise send something else than you meant,
// without an error:
//   - Struct: protobufjs ships its own google/protobuf/struct.proto whose fields are camelCase
//     (numberValue) whatever keepCase says. {number_value: 1} is dropped (an empty Value, which
//     the server rejects as VALUE_EMPTY) and a plain object given as a Struct ({a: 1}) is sent
//     as {}. Build every Struct with toStruct().
//   - Timestamp: a Date is sent as 1970-01-01 (fromObject finds no `seconds`), and a string fails
//     the call with INTERNAL "serialization failure". Use toTimestamp().
//   - Enums: an unknown name ("completed") is silently sent as 0 (UNSPECIFIED). Use enumName().
'use strict';

// toValue(v) -> google.protobuf.Value, following JSON.stringify: null -> null_value, numbers,
// strings, booleans, arrays -> list_value, objects -> struct_value, a Date -> its ISO string.
function toValue(v) {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  switch (typeof v) {
    case 'number':
      // JSON has no NaN or Infinity, and neither does a Struct once stored.
      if (!Number.isFinite(v)) throw new TypeError(`${v} cannot be stored in a Struct`);
      return { numberValue: v };
    case 'bigint':
      if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
        throw new TypeError(`${v} does not fit a Struct number (a double); send it as a string`);
      }
      return { numberValue: Number(v) };
    case 'string':
      return { stringValue: v };
    case 'boolean':
      return { boolValue: v };
    case 'object':
      if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
      if (v instanceof Date) return { stringValue: v.toISOString() };
      return { structValue: toStruct(v) };
    default:
      throw new TypeError(`a ${typeof v} cannot be stored in a Struct`);
  }
}

// toStruct({a: 1, b: [true, null]}) -> google.protobuf.Struct. Keys whose value is undefined are
// left out, as JSON.stringify does.
function toStruct(obj) {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) {
    throw new TypeError('a Struct is built from a plain object');
  }
  const fields = {};
  for (const [key, value] of Object.entries(obj)) {
    if (value !== undefined) fields[key] = toValue(value);
  }
  return { fields };
}

// fromValue / fromStruct: the reverse, for messages decoded with `oneofs: true` (the server's
// answers, e.g. CreateTurn's turn.metrics).
function fromValue(v) {
  switch (v.kind) {
    case 'numberValue':
      return v.numberValue;
    case 'stringValue':
      return v.stringValue;
    case 'boolValue':
      return v.boolValue;
    case 'structValue':
      return fromStruct(v.structValue);
    case 'listValue':
      return (v.listValue.values || []).map(fromValue);
    default:
      return null;
  }
}

function fromStruct(s) {
  const out = {};
  for (const [key, value] of Object.entries((s && s.fields) || {})) out[key] = fromValue(value);
  return out;
}

const RFC3339 = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$/i;

// toTimestamp(t) -> google.protobuf.Timestamp {seconds, nanos}. t is a Date, milliseconds since
// the epoch (Date.now()), or an RFC 3339 string; the string keeps its nanoseconds, which a Date
// would round to milliseconds.
function toTimestamp(t) {
  if (typeof t === 'string') {
    const m = RFC3339.exec(t);
    if (!m) throw new RangeError(`${JSON.stringify(t)} is not an RFC 3339 time`);
    const ms = Date.parse(`${m[1]}${m[3].toUpperCase()}`);
    if (Number.isNaN(ms)) throw new RangeError(`${JSON.stringify(t)} is not a valid time`);
    return { seconds: ms / 1000, nanos: Number((m[2] || '').padEnd(9, '0')) };
  }
  const ms = t instanceof Date ? t.getTime() : t;
  if (typeof ms !== 'number' || !Number.isFinite(ms)) {
    throw new TypeError(`${String(t)} is not a Date, epoch milliseconds or an RFC 3339 string`);
  }
  // Floor, not truncate: before 1970 nanos must stay positive.
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

// Kubiya's spellings of task and execution states.
const ENUM_ALIASES = { in_progress: 'RUNNING', canceled: 'CANCELLED' };

// enumName(root, 'turnstream.v1.TaskStatus', 'completed') -> 'TASK_STATUS_COMPLETED'. Accepts the
// full name, the name without its prefix in any case, and Kubiya's aliases; throws on anything
// else instead of letting protobufjs send UNSPECIFIED.
function enumName(root, enumType, word) {
  const type = root.lookupEnum(enumType);
  const prefix = `${type.name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()}_`;
  let name = String(word);
  name = (ENUM_ALIASES[name.toLowerCase()] || name).toUpperCase();
  if (!name.startsWith(prefix)) name = prefix + name;
  if (!Object.hasOwn(type.values, name)) {
    const allowed = Object.keys(type.values).join(', ');
    throw new RangeError(`${JSON.stringify(word)} is not a ${enumType}: one of ${allowed}`);
  }
  return name;
}

module.exports = { enumName, fromStruct, fromValue, toStruct, toTimestamp, toValue };
