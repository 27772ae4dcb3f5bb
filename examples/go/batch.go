package main

// Keeping a batch under the server's limits: the server measures the encoded AppendBatch against
// max_batch_bytes (and its record count against max_batch_records) and fails the whole call with
// INVALID_ARGUMENT BATCH_TOO_LARGE when it is over, so a client cuts its batches itself.

import (
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	turnstreamv1 "turnstream.dev/gen/go/turnstream/v1"
)

// batchOverhead is the largest offset field (tag + a 10-byte varint) an AppendBatch carries
// besides its records.
const batchOverhead = 11

// recordBytes is what one record adds to an AppendBatch: the field tag of `records`, the length
// prefix and the record.
func recordBytes(r *turnstreamv1.Record) int {
	return protowire.SizeTag(2) + protowire.SizeBytes(proto.Size(r))
}

// batchLength says how many records from sizes[start] fit in one batch.
func batchLength(sizes []int, start int, maxRecords int, maxBytes int64) int {
	bytes := int64(batchOverhead)
	count := 0
	for start+count < len(sizes) && count < maxRecords {
		next := int64(sizes[start+count])
		if bytes+next > maxBytes {
			break
		}
		bytes += next
		count++
	}
	return count
}
