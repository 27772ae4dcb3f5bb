package main

// The rich error model: turnstream fails a call with a google.rpc.Status whose details are an
// ErrorInfo {reason, domain: "turnstream.dev"} plus, depending on the failure, BadRequest field
// violations or a RetryInfo. grpc-go decodes the grpc-status-details-bin trailer for us:
// status.FromError(err).Details() returns the detail messages (their packages must be linked in,
// which importing errdetails does).

import (
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDetails is what a failed call says, details unpacked.
type ErrorDetails struct {
	Code       codes.Code
	Message    string
	Reason     string // ErrorInfo.reason, e.g. INVALID_RECORD, STREAM_FENCED
	Violations []*errdetails.BadRequest_FieldViolation
	RetryDelay time.Duration // RetryInfo.retry_delay; 0 when the server sent none
}

func errorDetails(err error) ErrorDetails {
	st, _ := status.FromError(err) // a non-gRPC error comes back as codes.Unknown
	out := ErrorDetails{Code: st.Code(), Message: st.Message()}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			out.Reason = d.GetReason()
		case *errdetails.BadRequest:
			out.Violations = append(out.Violations, d.GetFieldViolations()...)
		case *errdetails.RetryInfo:
			// Seconds and nanos rather than AsDuration(): older genproto releases (Debian 12's)
			// type retry_delay with github.com/golang/protobuf's Duration, which lacks it.
			delay := d.GetRetryDelay()
			out.RetryDelay = time.Duration(delay.GetSeconds())*time.Second + time.Duration(delay.GetNanos())
		}
	}
	return out
}

// retryable says whether a stream reconnects and resumes after this failure: the server, its
// database or the connection went away, or the server lost its place (STREAM_CONFLICT).
// Everything else is final: a client bug (INVALID_ARGUMENT), a newer connection owning the
// stream (ABORTED STREAM_FENCED), a message over gRPC's size limit (RESOURCE_EXHAUSTED: the
// same message fails again), ...
func retryable(d ErrorDetails) bool {
	switch d.Code {
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.DeadlineExceeded, codes.Canceled:
		return true
	case codes.Aborted:
		return d.Reason == "STREAM_CONFLICT"
	}
	return false
}
