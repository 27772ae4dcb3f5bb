// Loads the turnstream contract from its .proto files, twice on purpose: @grpc/proto-loader builds
// the service client; a protobufjs Root gives the messages this example encodes or decodes itself
// (batch sizes, google.rpc.Status details), which proto-loader does not expose.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

// google/rpc/status.proto is not imported by ingest.proto, so a loader given ingest.proto alone
// never sees google.rpc.Status and cannot decode the details of an error: name it explicitly.
// google/protobuf/*.proto need no file: protobufjs has them built in.
const FILES = [
  'turnstream/v1/ingest.proto',
  'google/rpc/status.proto',
  'google/rpc/error_details.proto',
];

// Options for proto-loader, and for toObject() wherever this example decodes a message itself.
const OBJECT_OPTIONS = {
  keepCase: true, // field names as in the .proto (execution_id), as the server's violations name them
  longs: String, // int64 arrive as decimal strings: a Number loses digits past 2^53
  enums: String, // enums arrive as names ("TASK_STATUS_COMPLETED"), not numbers
  defaults: false, // an absent field stays absent: an unset optional is not mistaken for 0
  oneofs: true, // a oneof's chosen field is named by a virtual property (msg.kind === 'ack')
};

// The directories holding protos/ and third_party/googleapis/ of the turnstream repository.
// TURNSTREAM_PROTO_DIRS (a PATH-style list) points elsewhere, e.g. where you copied them.
function protoDirs() {
  const fromEnv = process.env.TURNSTREAM_PROTO_DIRS;
  if (fromEnv) return fromEnv.split(path.delimiter).filter(Boolean);
  const repo = path.resolve(__dirname, '..', '..');
  return [path.join(repo, 'protos'), path.join(repo, 'third_party', 'googleapis')];
}

function loadRoot(dirs) {
  const root = new protobuf.Root();
  // protobufjs resolves imports relative to the importing file; protoc-style include
  // directories need this resolver (proto-loader installs the same one for includeDirs).
  root.resolvePath = (_origin, target) => {
    for (const dir of dirs) {
      const candidate = path.join(dir, target);
      if (fs.existsSync(candidate)) return candidate;
    }
    return target;
  };
  root.loadSync(FILES, { keepCase: true });
  return root;
}

// load() -> { IngestService, root }: IngestService is the client constructor
// (new IngestService(target, credentials, channelOptions)).
function load(dirs = protoDirs()) {
  for (const dir of dirs) {
    if (!fs.existsSync(dir)) throw new Error(`proto directory ${dir} does not exist`);
  }
  const definition = protoLoader.loadSync(FILES, { ...OBJECT_OPTIONS, includeDirs: dirs });
  const pkg = grpc.loadPackageDefinition(definition);
  return { IngestService: pkg.turnstream.v1.IngestService, root: loadRoot(dirs) };
}

module.exports = { OBJECT_OPTIONS, load, protoDirs };
