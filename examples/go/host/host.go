// Package host is a voice-sidecar host in Go: it runs a ToolHost gRPC server with two tools
// (calendar_lookup and crm_update), opens one Converse stream, streams a mono 16-bit WAV in real time
// in 20 ms frames (then silence, like an open phone line), prints transcripts and events, handles
// Interrupted, ends the session once the assistant has answered after its tool calls, and returns the
// assistant's audio.
package host

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	pb "voicehost/voicepb"
)

// ---------------------------------------------------------------------------------------------------
// Tools. Latencies are artificial, to show that the sidecar runs parallel calls in parallel.
// ---------------------------------------------------------------------------------------------------

// ToolDefinitions declares the two tools to the model.
func ToolDefinitions() []*pb.ToolDefinition {
	return []*pb.ToolDefinition{
		{
			Name:                 "calendar_lookup",
			Description:          "Look up the caller's calendar events for a date.",
			ParametersJsonSchema: `{"type":"object","properties":{"date":{"type":"string"}},"required":["date"]}`,
			TimeoutMs:            5000,
		},
		{
			Name:                 "crm_update",
			Description:          "Add a note to the caller's CRM record.",
			ParametersJsonSchema: `{"type":"object","properties":{"contact":{"type":"string"},"note":{"type":"string"}},"required":["contact","note"]}`,
			TimeoutMs:            5000,
		},
	}
}

// Tools implements the ToolHost service the sidecar calls; gRPC runs parallel calls concurrently.
type Tools struct {
	pb.UnimplementedToolHostServer

	mu          sync.Mutex
	invocations []*pb.ToolInvocation
}

// Invocations returns every call received so far.
func (t *Tools) Invocations() []*pb.ToolInvocation {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]*pb.ToolInvocation(nil), t.invocations...)
}

func (t *Tools) Invoke(ctx context.Context, inv *pb.ToolInvocation) (*pb.ToolOutput, error) {
	t.mu.Lock()
	t.invocations = append(t.invocations, proto.Clone(inv).(*pb.ToolInvocation))
	t.mu.Unlock()

	var args map[string]any
	_ = json.Unmarshal([]byte(inv.GetArgumentsJson()), &args) // the sidecar validated them
	var out any
	switch inv.GetName() {
	case "calendar_lookup":
		if err := sleep(ctx, 600*time.Millisecond); err != nil {
			return nil, err // the deadline passed or the session ended
		}
		out = map[string]any{"date": args["date"], "events": []map[string]string{
			{"time": "09:30", "title": "Dentist"},
			{"time": "14:00", "title": "Project review with Dana"},
		}}
	case "crm_update":
		if err := sleep(ctx, 400*time.Millisecond); err != nil {
			return nil, err
		}
		out = map[string]any{"status": "saved", "contact": args["contact"], "note_id": "N-1042"}
	default:
		// A failing tool is an error the model can talk about, not an RPC failure.
		return &pb.ToolOutput{Result: &pb.ToolOutput_Error{Error: "no such tool " + inv.GetName()}}, nil
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	return &pb.ToolOutput{Result: &pb.ToolOutput_OutputJson{OutputJson: string(b)}}, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-time.After(d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ---------------------------------------------------------------------------------------------------
// WAV in and out (mono PCM16 only).
// ---------------------------------------------------------------------------------------------------

// ReadWav returns the PCM16 little-endian bytes and sample rate of a mono 16-bit WAV file.
func ReadWav(path string) ([]byte, uint32, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	if len(b) < 12 || string(b[0:4]) != "RIFF" || string(b[8:12]) != "WAVE" {
		return nil, 0, fmt.Errorf("%s is not a WAV file", path)
	}
	var rate uint32
	pcm16Mono := false
	for off := 12; off+8 <= len(b); {
		id, size, body := string(b[off:off+4]), int(binary.LittleEndian.Uint32(b[off+4:])), off+8
		switch id {
		case "fmt ":
			le := binary.LittleEndian
			pcm16Mono = le.Uint16(b[body:]) == 1 && le.Uint16(b[body+2:]) == 1 && le.Uint16(b[body+14:]) == 16
			rate = le.Uint32(b[body+4:])
		case "data":
			if !pcm16Mono {
				return nil, 0, fmt.Errorf("%s must be mono 16-bit PCM", path)
			}
			return b[body:min(body+size, len(b))], rate, nil
		}
		off = body + size + size%2
	}
	return nil, 0, fmt.Errorf("%s has no data chunk", path)
}

// WriteWav writes mono PCM16 little-endian bytes as a WAV file.
func WriteWav(path string, pcm []byte, rate uint32) error {
	h := make([]byte, 44)
	le := binary.LittleEndian
	copy(h[0:], "RIFF")
	le.PutUint32(h[4:], uint32(36+len(pcm)))
	copy(h[8:], "WAVEfmt ")
	le.PutUint32(h[16:], 16)
	le.PutUint16(h[20:], 1) // PCM
	le.PutUint16(h[22:], 1) // mono
	le.PutUint32(h[24:], rate)
	le.PutUint32(h[28:], rate*2)
	le.PutUint16(h[32:], 2)
	le.PutUint16(h[34:], 16)
	copy(h[36:], "data")
	le.PutUint32(h[40:], uint32(len(pcm)))
	return os.WriteFile(path, append(h, pcm...), 0o644)
}

// ---------------------------------------------------------------------------------------------------
// One session.
// ---------------------------------------------------------------------------------------------------

// Result is what one session produced.
type Result struct {
	SessionID            string
	UserTranscripts      []string
	AssistantTranscripts []*pb.Transcript
	ToolInvocations      []*pb.ToolInvocation     // as received by this host's ToolHost
	ToolStatuses         map[string]pb.ToolStatus // call_id -> status, from ToolCallFinished
	Interruptions        []*pb.Interrupted
	ReplyPCM             []byte // PCM16 at SampleRate, only what the caller heard
	SampleRate           uint32
	Ended                *pb.SessionEnded
}

// ReplySeconds is the duration of the reply audio.
func (r *Result) ReplySeconds() float64 { return float64(len(r.ReplyPCM)) / 2 / float64(r.SampleRate) }

// Options for RunSession.
type Options struct {
	Sidecar     string // host:port of the sidecar
	Wav         string // mono 16-bit WAV to stream
	ToolsListen string // ToolHost address; empty means a free loopback port
	Log         func(format string, args ...any)
	// Test hook: speak the WAV again as soon as the answer after the tool calls starts playing, to
	// barge in on it (the sidecar then sends Interrupted).
	BargeIn bool
}

// RunSession runs one Converse session until the sidecar ends it (or ctx is done).
func RunSession(ctx context.Context, o Options) (*Result, error) {
	logf := o.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	speech, rate, err := ReadWav(o.Wav)
	if err != nil {
		return nil, err
	}

	// The ToolHost; the session's tool_routing points the sidecar at it.
	listen := o.ToolsListen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	tools := &Tools{}
	toolServer := grpc.NewServer()
	pb.RegisterToolHostServer(toolServer, tools)
	go func() { _ = toolServer.Serve(lis) }()
	defer toolServer.Stop()

	conn, err := grpc.NewClient(o.Sidecar, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t0 := time.Now()
	stamp := func(format string, args ...any) {
		logf("[%6d ms] %s", time.Since(t0).Milliseconds(), fmt.Sprintf(format, args...))
	}
	// WaitForReady: the sidecar may still be starting.
	stream, err := pb.NewVoiceSidecarClient(conn).Converse(ctx, grpc.WaitForReady(true))
	if err != nil {
		return nil, fmt.Errorf("opening Converse: %w", err)
	}

	// gRPC streams allow one sender at a time: the microphone and the event loop share this.
	var sendMu sync.Mutex
	send := func(m *pb.ClientMessage) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(m)
	}
	format := &pb.AudioFormat{Codec: pb.Codec_CODEC_PCM16, SampleRateHz: rate, Channels: 1, FrameMs: 20}
	err = send(&pb.ClientMessage{Message: &pb.ClientMessage_Start{Start: &pb.SessionStart{
		InputFormat:       format,
		OutputFormat:      format,
		Instructions:      "You are a helpful phone assistant for a small business.",
		Tools:             ToolDefinitions(),
		Model:             "gpt-realtime-2",
		Reasoning:         &pb.Reasoning{Effort: pb.ReasoningEffort_REASONING_EFFORT_LOW},
		ParallelToolCalls: proto.Bool(true),
		ToolRouting: &pb.ToolRouting{Route: &pb.ToolRouting_CallbackAddress{
			CallbackAddress: "http://" + lis.Addr().String(),
		}},
	}}})
	if err != nil {
		return nil, fmt.Errorf("sending SessionStart: %w", err)
	}
	stamp("streaming %.2f s of speech at %d Hz in 20 ms frames", float64(len(speech))/2/float64(rate), rate)

	// The "microphone": the WAV in real time, then silence. speakAgain restarts the WAV.
	micDone := make(chan struct{})
	speakAgain := make(chan struct{}, 1)
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		frame := int(rate/50) * 2
		silence := make([]byte, frame)
		from := uint64(1) // the frame at which the WAV (re)starts
		for seq := uint64(1); ; seq++ {
			select {
			case <-speakAgain:
				from = seq
			default:
			}
			start := int(seq-from) * frame
			data := silence
			if start < len(speech) {
				data = speech[start:min(start+frame, len(speech))]
			}
			if send(&pb.ClientMessage{Message: &pb.ClientMessage_Audio{Audio: &pb.AudioFrame{Data: data, Seq: seq}}}) != nil {
				return
			}
			select {
			case <-tick.C:
			case <-micDone:
				return
			}
		}
	}()
	stopMic := sync.OnceFunc(func() { close(micDone) })
	defer stopMic()

	r := &Result{SampleRate: rate, ToolStatuses: map[string]pb.ToolStatus{}}
	// Reply audio per assistant item, so that Interrupted can cut an item at what was heard.
	var order []string
	items := map[string][]byte{}
	pending, toolRoundsDone, ending, bargedIn := 0, 0, false, false
loop:
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("stream failed: %w", err)
		}
		switch ev := m.GetMessage().(type) {
		case *pb.ServerMessage_Started:
			r.SessionID = ev.Started.GetSessionId()
			stamp("session %s started: model %s, upstream audio %s", r.SessionID, ev.Started.GetModel(), ev.Started.GetUpstreamAudioFormat())
		case *pb.ServerMessage_SpeechStarted:
			stamp("user started speaking")
		case *pb.ServerMessage_SpeechStopped:
			stamp("user stopped speaking (at %d ms of input audio)", ev.SpeechStopped.GetAudioEndMs())
		case *pb.ServerMessage_Transcript:
			t := ev.Transcript
			switch {
			case !t.GetFinal():
			case t.GetRole() == pb.Role_ROLE_USER:
				r.UserTranscripts = append(r.UserTranscripts, t.GetText())
				stamp("USER:      %s", t.GetText())
			case t.GetRole() == pb.Role_ROLE_ASSISTANT:
				r.AssistantTranscripts = append(r.AssistantTranscripts, t)
				stamp("ASSISTANT (%s): %s", strings.ToLower(strings.TrimPrefix(t.GetPhase().String(), "PHASE_")), t.GetText())
			}
		case *pb.ServerMessage_Audio:
			if o.BargeIn && toolRoundsDone > 0 && !bargedIn {
				bargedIn = true
				speakAgain <- struct{}{}
				stamp("barging in: speaking again over the answer")
			}
			id := ev.Audio.GetItemId()
			if _, ok := items[id]; !ok {
				order = append(order, id)
			}
			items[id] = append(items[id], ev.Audio.GetData()...)
		case *pb.ServerMessage_Interrupted:
			// Barge-in: a player flushes its buffer now. Here the saved reply keeps only what the
			// caller heard of the item and drops the items that were never heard.
			i := ev.Interrupted
			r.Interruptions = append(r.Interruptions, i)
			keep := int(uint64(i.GetPlayedMs())*uint64(rate)/1000) * 2
			if a := items[i.GetItemId()]; len(a) > keep {
				items[i.GetItemId()] = a[:keep]
			}
			for _, id := range i.GetDeletedItemIds() {
				delete(items, id)
			}
			stamp("interrupted: %s at %d ms", i.GetItemId(), i.GetPlayedMs())
		case *pb.ServerMessage_ToolCallStarted:
			c := ev.ToolCallStarted
			pending++
			r.ToolStatuses[c.GetCallId()] = pb.ToolStatus_TOOL_STATUS_UNSPECIFIED
			stamp("tool call  %s %s(%s)", c.GetCallId(), c.GetName(), c.GetArgumentsJson())
		case *pb.ServerMessage_ToolCallFinished:
			c := ev.ToolCallFinished
			pending = max(0, pending-1)
			r.ToolStatuses[c.GetCallId()] = c.GetStatus()
			stamp("tool done  %s %s %s in %d ms", c.GetCallId(), c.GetName(), c.GetStatus(), c.GetDurationMs())
			if pending == 0 {
				toolRoundsDone++
			}
		case *pb.ServerMessage_ResponseDone:
			d := ev.ResponseDone
			stamp("response %s %s, voice-to-voice %d ms", d.GetResponseId(), d.GetStatus(), d.GetVoiceToVoiceMs())
			// A completed answer after the tool round ends this demo conversation.
			if d.GetStatus() == "completed" && toolRoundsDone > 0 && pending == 0 && !ending {
				ending = true
				end := &pb.ClientMessage{Message: &pb.ClientMessage_Control{Control: &pb.Control{
					Action: &pb.Control_End{End: &pb.Empty{}},
				}}}
				if err := send(end); err != nil {
					return nil, fmt.Errorf("sending end: %w", err)
				}
			}
		case *pb.ServerMessage_Error:
			stamp("error %s: %s", ev.Error.GetCode(), ev.Error.GetMessage())
		case *pb.ServerMessage_Ended:
			r.Ended = ev.Ended
			s := ev.Ended.GetSummary()
			stamp("session ended (%s): %d turn(s), %d tool call(s)", ev.Ended.GetReason(), s.GetTurns(), s.GetToolCalls())
			stopMic()
			sendMu.Lock()
			_ = stream.CloseSend()
			sendMu.Unlock()
			break loop
		default:
			stamp("%T", ev)
		}
	}
	for _, id := range order {
		r.ReplyPCM = append(r.ReplyPCM, items[id]...)
	}
	r.ToolInvocations = tools.Invocations()
	return r, nil
}
