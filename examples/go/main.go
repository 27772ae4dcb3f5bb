// Command worker reports one simulated agent run to turnstream: the execution and a task by
// unary Write, an invalid turn to show the error details, then every turn and tool call over an
// Append stream that survives server restarts. It prints one JSON object per line, for people
// and tests.
//
//	go build -o worker . && ./worker --target 127.0.0.1:50051 --turns 20
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	turnstreamv1 "turnstream.dev/gen/go/turnstream/v1"
)

var (
	target      = flag.String("target", envOr("TURNSTREAM_TARGET", "127.0.0.1:50051"), "turnstream gRPC address")
	executionID = flag.String("execution", fmt.Sprintf("go-%d", time.Now().UnixNano()/1e6), "execution id (and stream id)")
	turns       = flag.Int("turns", 20, "agent steps to simulate")
	chunk       = flag.Int("chunk", 10, "steps per Append write")
	interval    = flag.Duration("interval", 0, "simulated LLM latency per step (also --interval-ms)")
	intervalMs  = flag.Int("interval-ms", 0, "the same, in milliseconds")
)

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func emit(event map[string]interface{}) {
	line, err := json.Marshal(event)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(line))
}

// mustStruct builds a google.protobuf.Struct from JSON-like Go values. structpb.NewStruct takes
// nil, bool, numbers, string, []interface{} and map[string]interface{}; a []string or a
// map[string]string is an error, not a silent loss: build those as []interface{} / maps of
// interface{}.
func mustStruct(m map[string]interface{}) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		log.Fatalf("building a Struct: %v", err)
	}
	return s
}

func violationList(vs []*errdetails.BadRequest_FieldViolation) []map[string]string {
	out := []map[string]string{}
	for _, v := range vs {
		out = append(out, map[string]string{"field": v.GetField(), "description": v.GetDescription()})
	}
	return out
}

// step returns the records of agent step i (1-based): one turn, and a tool call every fifth step.
func step(i int) []*turnstreamv1.Record {
	turnID := fmt.Sprintf("%s-t%d", *executionID, i)
	started := time.Now()
	finish, tools := "end_turn", []string(nil)
	if i%5 == 0 {
		finish, tools = "tool_use", []string{"read_file"}
	}
	records := []*turnstreamv1.Record{{Kind: &turnstreamv1.Record_Turn{Turn: &turnstreamv1.Turn{
		ExecutionId: *executionID,
		// proto3 `optional` fields are pointers in Go: nil is "not sent", proto.Int32(0) is zero.
		TurnNumber:       proto.Int32(int32(i)),
		TurnId:           turnID,
		Model:            "claude-sonnet-4-5",
		ModelProvider:    "anthropic",
		StartedAt:        timestamppb.New(started),
		CompletedAt:      timestamppb.New(started.Add(1500 * time.Millisecond)),
		InputTokens:      proto.Int64(int64(1000 + i)),
		OutputTokens:     proto.Int64(int64(100 + i)),
		CacheReadTokens:  proto.Int64(int64(i)),
		FinishReason:     finish,
		ToolsCalledNames: tools,
		Metrics: mustStruct(map[string]interface{}{
			"latency_ms": float64(i) * 1.5,
			"cache_hit":  i%2 == 0,
			"label":      fmt.Sprintf("turn %d", i),
			"tags":       []interface{}{"a", i},
			"nested":     map[string]interface{}{"depth": 2, "none": nil},
		}),
	}}}}
	if i%5 == 0 {
		records = append(records, &turnstreamv1.Record{Kind: &turnstreamv1.Record_ToolCall{ToolCall: &turnstreamv1.ToolCall{
			ExecutionId: *executionID,
			TurnId:      turnID,
			ToolUseId:   fmt.Sprintf("%s-u%d", *executionID, i),
			ToolName:    "read_file",
			StartedAt:   timestamppb.New(started.Add(1500 * time.Millisecond)),
			CompletedAt: timestamppb.New(started.Add(1520 * time.Millisecond)),
			ToolInput: mustStruct(map[string]interface{}{
				"path": fmt.Sprintf("src/file_%d.py", i), "lines": []interface{}{1, 2, 3}, "recursive": false,
			}),
			ToolOutput: proto.String("ok"),
			Success:    proto.Bool(true),
		}}})
	}
	if i == (*turns+1)/2 {
		// Invalid on purpose (no tool_name): answered in the batch's ack, kept as a dead letter.
		records = append(records, &turnstreamv1.Record{Kind: &turnstreamv1.Record_ToolCall{ToolCall: &turnstreamv1.ToolCall{
			ExecutionId: *executionID,
			ToolUseId:   *executionID + "-bad",
			StartedAt:   timestamppb.New(started),
		}}})
	}
	return records
}

func main() {
	flag.Parse()
	if *intervalMs > 0 {
		*interval = time.Duration(*intervalMs) * time.Millisecond
	}
	conn, err := grpc.Dial(*target,
		// Plain text to a local server. grpc.WithInsecure() is spelled so for grpc-go < 1.34 (as in
		// Debian 12); with a newer grpc-go write
		// grpc.WithTransportCredentials(insecure.NewCredentials()), or real TLS credentials.
		grpc.WithInsecure(),
		// gRPC's default reconnect backoff grows to 120 s, which would keep a restarted server
		// unused for minutes; keepalive detects a peer that vanished without closing the connection.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second}),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	client := turnstreamv1.NewIngestServiceClient(conn)
	startedAt := time.Now()

	// 1. Unary Write: partial success, answered after commit.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	written, err := client.Write(ctx, &turnstreamv1.WriteRequest{
		Execution: &turnstreamv1.Execution{
			ExecutionId:  *executionID,
			WorkflowName: "polyglot-example",
			TriggeredBy:  turnstreamv1.TriggerType_TRIGGER_TYPE_MANUAL,
			Status:       turnstreamv1.ExecutionStatus_EXECUTION_STATUS_RUNNING,
			StartedAt:    timestamppb.New(startedAt),
			Source:       "examples/go",
			Metadata: mustStruct(map[string]interface{}{
				"language": "go", "attempt": 1, "tags": []interface{}{"example", "go"}, "parent": nil,
			}),
		},
		Tasks: []*turnstreamv1.Task{{
			ExecutionId:     *executionID,
			TaskNumber:      proto.Int32(1),
			TaskDescription: "stream the turns",
			Status:          turnstreamv1.TaskStatus_TASK_STATUS_COMPLETED,
			StartedAt:       timestamppb.New(startedAt),
			CompletedAt:     timestamppb.Now(),
			Result:          "ok",
		}},
	})
	cancel()
	if err != nil {
		log.Fatalf("Write: %v", err)
	}
	emit(map[string]interface{}{"event": "write", "counts": written.GetCounts().GetTotal()})

	// 2. A call that fails: CreateTurn with an invalid turn ends INVALID_ARGUMENT; the reason and
	//    every field violation are in the status details.
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	_, err = client.CreateTurn(ctx, &turnstreamv1.CreateTurnRequest{
		Turn: &turnstreamv1.Turn{ExecutionId: *executionID, TurnNumber: proto.Int32(0)},
	})
	cancel()
	if status.Code(err) != codes.InvalidArgument {
		log.Fatalf("CreateTurn of an invalid turn: want INVALID_ARGUMENT, got %v", err)
	}
	details := errorDetails(err)
	emit(map[string]interface{}{
		"event": "invalid_turn", "code": "INVALID_ARGUMENT", "reason": details.Reason,
		"violations": violationList(details.Violations),
	})

	// 3. Append: every step's records over one stream, resumed across disconnects.
	stream := NewAppendStream(client, *executionID)
	stream.OnEvent = emit
	var pending []*turnstreamv1.Record
	for i := 1; i <= *turns; i++ {
		pending = append(pending, step(i)...)
		if i%*chunk == 0 || i == *turns {
			rejections, err := stream.Write(pending)
			if err != nil {
				log.Fatalf("Append: %v", err)
			}
			for _, r := range rejections {
				emit(map[string]interface{}{"event": "rejection", "offset": r.Offset, "kind": r.Kind.String(), "violations": violationList(r.Violations)})
			}
			pending = nil
			emit(map[string]interface{}{"event": "committed", "committed_offset": stream.Committed()})
		}
		time.Sleep(*interval)
	}
	stream.Close()

	// 4. The end of the run, and what the server holds for the stream.
	ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := client.Write(ctx, &turnstreamv1.WriteRequest{Execution: &turnstreamv1.Execution{
		ExecutionId: *executionID,
		Status:      turnstreamv1.ExecutionStatus_EXECUTION_STATUS_COMPLETED,
		CompletedAt: timestamppb.Now(),
	}}); err != nil {
		log.Fatalf("Write: %v", err)
	}
	created, err := client.CreateTurn(ctx, &turnstreamv1.CreateTurnRequest{Turn: &turnstreamv1.Turn{
		ExecutionId:  *executionID,
		TurnNumber:   proto.Int32(int32(*turns + 1)),
		Model:        "claude-sonnet-4-5",
		StartedAt:    timestamppb.Now(),
		InputTokens:  proto.Int64(10),
		OutputTokens: proto.Int64(5),
		Metrics:      mustStruct(map[string]interface{}{"summary": true}),
	}})
	if err != nil {
		log.Fatalf("CreateTurn: %v", err)
	}
	got, err := client.GetStream(ctx, &turnstreamv1.GetStreamRequest{StreamId: *executionID})
	if err != nil {
		log.Fatalf("GetStream: %v", err)
	}
	emit(map[string]interface{}{
		"event": "done", "committed_offset": got.GetCommittedOffset(), "reconnects": stream.Reconnects,
		"summary_turn": map[string]interface{}{
			"total_tokens": created.GetTurn().GetTotalTokens(), "metrics": created.GetTurn().GetMetrics().AsMap(),
		},
	})
}
