package main

// IngestService.Append from Go: one stream of records, stored exactly once whatever happens to
// the connection or the server. The protocol (docs/streaming.md): open {stream_id} -> opened
// {committed_offset, limits}; batch {offset, records} -> one ack per batch, in order, sent after
// the batch committed. On any disconnect: reopen, read committed_offset, resend from there the
// records not yet acked, unchanged and at the same offsets; the server answers a batch it already
// holds ALREADY_STORED instead of storing it twice.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	turnstreamv1 "turnstream.dev/gen/go/turnstream/v1"
)

// Rejection is an invalid record: it took its offset and the server keeps it in rejected_records.
type Rejection struct {
	Offset     int64
	Kind       turnstreamv1.RecordKind
	Violations []*errdetails.BadRequest_FieldViolation
}

// streamEnded is a failure that is not a gRPC status: the call ended OK mid-conversation, the
// server drained, or it answered something unexpected.
type streamEnded struct {
	details   ErrorDetails
	immediate bool // reconnect at once (a drain), without backoff
}

func (e *streamEnded) Error() string { return e.details.Message }

func ended(code codes.Code, immediate bool, format string, args ...interface{}) error {
	msg := fmt.Sprintf(format, args...)
	return &streamEnded{details: ErrorDetails{Code: code, Message: msg}, immediate: immediate}
}

// AppendStream writes records to one stream. Write is not safe for concurrent use.
type AppendStream struct {
	client   turnstreamv1.IngestServiceClient
	streamID string

	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	MaxReconnect   time.Duration                // without progress, then Write gives up
	OnEvent        func(map[string]interface{}) // "opened", "ack" and "reconnect" events, to log

	sendMu   sync.Mutex // Send is not safe for concurrent use: Write and the heartbeats share it
	call     turnstreamv1.IngestService_AppendClient
	cancel   context.CancelFunc
	lastSent time.Time

	limits     *turnstreamv1.StreamLimits
	committed  int64 // the stream's committed offset, as last heard from the server
	next       int64 // offset of the next record written
	opened     bool  // next is known (the first open sets it)
	Reconnects int
	failure    error
}

func NewAppendStream(client turnstreamv1.IngestServiceClient, streamID string) *AppendStream {
	return &AppendStream{
		client:         client,
		streamID:       streamID,
		InitialBackoff: 100 * time.Millisecond,
		MaxBackoff:     5 * time.Second,
		MaxReconnect:   time.Minute,
		OnEvent:        func(map[string]interface{}) {},
	}
}

// Committed is the stream's committed offset.
func (s *AppendStream) Committed() int64 { return s.committed }

// Write appends records at the next offsets and returns once every one of them is committed,
// with the rejections of the invalid ones. It reconnects and resumes after retryable failures;
// after a final one (or MaxReconnect without progress) the stream is unusable.
func (s *AppendStream) Write(records []*turnstreamv1.Record) ([]Rejection, error) {
	if s.failure != nil {
		return nil, s.failure
	}
	if len(records) == 0 {
		return nil, nil
	}
	if !s.opened {
		if err := s.guard(s.retrying(s.open)); err != nil {
			return nil, err
		}
	}
	sizes := make([]int, len(records))
	for i, r := range records {
		sizes[i] = recordBytes(r)
		if int64(sizes[i]+batchOverhead) > s.limits.GetMaxBatchBytes() {
			return nil, fmt.Errorf("record %d is %d bytes, more than the server's max_batch_bytes "+
				"(%d): it can never be sent", i, sizes[i], s.limits.GetMaxBatchBytes())
		}
	}
	first := s.next
	s.next += int64(len(records))
	var rejections []Rejection
	err := s.guard(s.retrying(func() error {
		if s.call == nil {
			if err := s.open(); err != nil {
				return err
			}
		}
		return s.send(records, sizes, first, &rejections)
	}))
	return rejections, err
}

// Close half-closes the stream: the server answers what it read (nothing: Write waited for every
// ack) and ends the call with OK.
func (s *AppendStream) Close() {
	if s.call == nil {
		return
	}
	s.sendMu.Lock()
	_ = s.call.CloseSend()
	s.sendMu.Unlock()
	for {
		if _, err := s.call.Recv(); err != nil {
			break // io.EOF (OK) or an error: nothing un-acked is left either way
		}
	}
	s.drop()
}

// A final failure leaves the stream's offsets unknown: every later Write fails with it too.
func (s *AppendStream) guard(err error) error {
	if err != nil {
		s.failure = err
		s.drop()
	}
	return err
}

func (s *AppendStream) open() error {
	ctx, cancel := context.WithCancel(context.Background())
	call, err := s.client.Append(ctx)
	if err == nil {
		err = call.Send(&turnstreamv1.AppendRequest{
			Kind: &turnstreamv1.AppendRequest_Open{Open: &turnstreamv1.OpenStream{StreamId: s.streamID}},
		})
	}
	var first *turnstreamv1.AppendResponse
	if err == nil {
		first, err = call.Recv()
	}
	if err == io.EOF {
		err = ended(codes.Unavailable, false, "the server ended the call before opening the stream")
	}
	if err == nil && first.GetOpened() == nil {
		err = ended(codes.Internal, false, "expected opened, got %T", first.GetKind())
	}
	if err != nil {
		cancel()
		return err
	}
	committed := first.GetOpened().GetCommittedOffset()
	if !s.opened {
		s.next, s.opened = committed, true // a stream written before (by an earlier run) continues
	} else if committed > s.next {
		cancel()
		return ended(codes.Aborted, false, "stream %s is at %d, past what this writer sent (%d): "+
			"another writer is using it", s.streamID, committed, s.next)
	}
	s.committed = committed
	s.limits = first.GetOpened().GetLimits()
	s.sendMu.Lock() // the heartbeat goroutine of the previous call may still hold it
	s.call, s.cancel, s.lastSent = call, cancel, time.Now()
	s.sendMu.Unlock()
	go s.heartbeats(ctx, call, s.limits.GetHeartbeatInterval().AsDuration())
	s.OnEvent(map[string]interface{}{"event": "opened", "committed_offset": committed})
	return nil
}

func (s *AppendStream) send(records []*turnstreamv1.Record, sizes []int, first int64, rejections *[]Rejection) error {
	end := first + int64(len(records))
	// Records below the committed offset were stored before a disconnect lost their ack.
	sent := first
	if s.committed > sent {
		sent = s.committed
	}
	inflight := 0
	maxInflight := int(s.limits.GetMaxInflightBatches())
	if maxInflight < 1 {
		maxInflight = 1
	}
	for s.committed < end {
		// Pipelining: up to max_inflight_batches batches wait for their ack; the server reads no
		// more than that, so waiting for acks here is the backpressure.
		for sent < end && inflight < maxInflight {
			start := int(sent - first)
			count := batchLength(sizes, start, int(s.limits.GetMaxBatchRecords()), s.limits.GetMaxBatchBytes())
			batch := &turnstreamv1.AppendBatch{Offset: sent, Records: records[start : start+count]}
			if err := s.sendLocked(&turnstreamv1.AppendRequest{Kind: &turnstreamv1.AppendRequest_Batch{Batch: batch}}); err != nil {
				return err
			}
			inflight++
			sent += int64(count)
		}
		ack, err := s.nextAck()
		if err != nil {
			return err
		}
		inflight--
		if ack.GetOutcome() == turnstreamv1.AppendOutcome_APPEND_OUTCOME_GAP {
			// The server holds less than we thought: reopen, which reads the committed offset.
			return ended(codes.Unavailable, true, "gap at offset %d", ack.GetOffset())
		}
		// APPENDED or ALREADY_STORED (a resent batch the server had committed): both are success.
		if ack.GetCommittedOffset() > s.committed {
			s.committed = ack.GetCommittedOffset()
		}
		s.OnEvent(map[string]interface{}{
			"event": "ack", "offset": ack.GetOffset(), "outcome": ack.GetOutcome().String(),
			"committed_offset": s.committed,
		})
		for _, r := range ack.GetRejections() {
			*rejections = append(*rejections, Rejection{
				Offset: ack.GetOffset() + int64(r.GetIndex()), Kind: r.GetKind(), Violations: r.GetViolations(),
			})
		}
	}
	return nil
}

func (s *AppendStream) nextAck() (*turnstreamv1.BatchAck, error) {
	for {
		msg, err := s.call.Recv()
		if err == io.EOF {
			return nil, ended(codes.Unavailable, false, "the server ended the call")
		}
		if err != nil {
			return nil, err
		}
		switch kind := msg.GetKind().(type) {
		case *turnstreamv1.AppendResponse_Ack:
			return kind.Ack, nil
		case *turnstreamv1.AppendResponse_Drain:
			// The server is shutting down after answering everything it read: resume elsewhere now.
			return nil, ended(codes.Unavailable, true, "the server drains: %s", kind.Drain.GetReason())
		case *turnstreamv1.AppendResponse_Heartbeat:
		default:
			return nil, ended(codes.Internal, false, "unexpected %T", kind)
		}
	}
}

func (s *AppendStream) sendLocked(req *turnstreamv1.AppendRequest) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	s.lastSent = time.Now()
	err := s.call.Send(req)
	if err == io.EOF {
		// Send reports io.EOF when the call is over; Recv returns why. Let nextAck find out.
		return nil
	}
	return err
}

// retrying returns a func running attempt until it succeeds, reconnecting after retryable
// failures with full-jitter backoff (never shorter than the server's RetryInfo), for up to
// MaxReconnect without progress.
func (s *AppendStream) retrying(attempt func() error) error {
	failures := 0
	since := time.Now()
	committed := s.committed
	for {
		err := attempt()
		if err == nil {
			return nil
		}
		var details ErrorDetails
		immediate := false
		var own *streamEnded
		if errors.As(err, &own) {
			details, immediate = own.details, own.immediate
		} else if _, ok := status.FromError(err); ok {
			details = errorDetails(err)
		} else {
			return err // not a gRPC failure: a bug to see, not to retry
		}
		s.drop()
		if s.committed > committed {
			// Acks arrived before this failure: a fresh outage, a fresh budget.
			failures, since, committed = 0, time.Now(), s.committed
		}
		if !retryable(details) || time.Since(since) > s.MaxReconnect {
			return err
		}
		backoff := s.MaxBackoff
		if shift := uint(failures); shift < 16 && s.InitialBackoff<<shift < backoff {
			backoff = s.InitialBackoff << shift
		}
		delay := time.Duration(rand.Int63n(int64(backoff) + 1))
		if delay < details.RetryDelay {
			delay = details.RetryDelay
		}
		if immediate {
			delay = 0
		}
		failures++
		s.Reconnects++
		s.OnEvent(map[string]interface{}{
			"event": "reconnect", "code": details.Code.String(), "reason": details.Reason,
			"committed_offset": s.committed, "delay_ms": delay.Milliseconds(),
		})
		time.Sleep(delay)
	}
}

func (s *AppendStream) drop() {
	if s.cancel != nil {
		s.cancel() // ends the call and its heartbeat goroutine
	}
	s.call, s.cancel = nil, nil
}

// Proxies (Envoy: 5 minutes) close streams that carry nothing; a worker that pauses between
// writes longer than heartbeat_interval sends a heartbeat instead of losing its stream.
func (s *AppendStream) heartbeats(ctx context.Context, call turnstreamv1.IngestService_AppendClient, every time.Duration) {
	if every <= 0 {
		every = 30 * time.Second
	}
	ticker := time.NewTicker(every / 2)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			s.sendMu.Lock()
			if time.Since(s.lastSent) >= every {
				s.lastSent = time.Now()
				_ = call.Send(&turnstreamv1.AppendRequest{
					Kind: &turnstreamv1.AppendRequest_Heartbeat{Heartbeat: &turnstreamv1.Heartbeat{}},
				})
			}
			s.sendMu.Unlock()
		}
	}
}
