// The rich error model: turnstream fails a call with a google.rpc.Status whose details are an
// ErrorInfo {reason, domain: "turnstream.dev"} plus, depending on the failure, BadRequest field
// violations or a RetryInfo. gRPC carries that Status, serialized, in the trailer
// grpc-status-details-bin; @grpc/grpc-js leaves it undecoded in err.metadata.
'use strict';

const grpc = require('@grpc/grpc-js');
const { OBJECT_OPTIONS } = require('./protos');

// errorDetails(root, err) -> {code, codeName, message, reason, violations, retryDelayMs, details}
// for a ServiceError from @grpc/grpc-js. `details` holds every detail decoded, each with its
// `@type` ("google.rpc.BadRequest"); a detail of a type the root does not know is kept undecoded.
function errorDetails(root, err) {
  const out = {
    code: err.code,
    codeName: grpc.status[err.code] || String(err.code),
    message: err.details || err.message,
    reason: '',
    violations: [],
    retryDelayMs: null,
    details: [],
  };
  const [raw] = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (!raw) return out; // a failure that did not come from turnstream (e.g. no connection)
  const Status = root.lookupType('google.rpc.Status');
  const status = Status.decode(raw);
  out.message = status.message || out.message;
  for (const any of status.details) {
    // type_url is "type.googleapis.com/google.rpc.BadRequest": the type is after the last '/'.
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    let type;
    try {
      type = root.lookupType(typeName);
    } catch {
      out.details.push({ '@type': typeName, value: Buffer.from(any.value) });
      continue;
    }
    const detail = type.toObject(type.decode(any.value), OBJECT_OPTIONS);
    out.details.push({ '@type': typeName, ...detail });
    if (typeName === 'google.rpc.ErrorInfo') out.reason = detail.reason || '';
    if (typeName === 'google.rpc.BadRequest') out.violations.push(...(detail.field_violations || []));
    if (typeName === 'google.rpc.RetryInfo' && detail.retry_delay) {
      const { seconds = '0', nanos = 0 } = detail.retry_delay;
      out.retryDelayMs = Number(seconds) * 1000 + nanos / 1e6;
    }
  }
  return out;
}

// Codes after which a stream reconnects and resumes: the server, its database or the connection
// went away, or the server lost its place (STREAM_CONFLICT). Everything else is final: a client
// bug (INVALID_ARGUMENT), a newer connection owning the stream (ABORTED STREAM_FENCED), a
// message over gRPC's size limit (RESOURCE_EXHAUSTED: the same message fails again), ...
const RETRYABLE = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.INTERNAL,
  grpc.status.UNKNOWN,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.CANCELLED,
]);

function isRetryable(info) {
  if (info.code === grpc.status.ABORTED) return info.reason === 'STREAM_CONFLICT';
  return RETRYABLE.has(info.code);
}

module.exports = { errorDetails, isRetryable };
