package host

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	pb "voicehost/voicepb"
)

// One session through the real sidecar, started by ../run_tests.sh on its simulator (address in
// SIDECAR_ADDR): checks what the host received.
func TestOneCallWithTwoToolsAndSpokenReply(t *testing.T) {
	sidecar := os.Getenv("SIDECAR_ADDR")
	if sidecar == "" {
		t.Fatal("SIDECAR_ADDR must name a running sidecar (run ./run_tests.sh)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r, err := RunSession(ctx, Options{Sidecar: sidecar, Wav: "../../../services/demo/assets/sample-16k.wav", Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}

	if !strings.HasPrefix(r.SessionID, "vs_") {
		t.Errorf("session id %q", r.SessionID)
	}
	if len(r.UserTranscripts) != 1 || !strings.Contains(r.UserTranscripts[0], "check my calendar for tomorrow") {
		t.Errorf("user transcripts %q", r.UserTranscripts)
	}
	var said []string
	preamble := false
	for _, a := range r.AssistantTranscripts {
		said = append(said, a.GetText())
		preamble = preamble || a.GetPhase() == pb.Phase_PHASE_PREAMBLE
	}
	if !preamble || !slices.ContainsFunc(said, func(s string) bool { return strings.Contains(s, "dentist at nine thirty") }) {
		t.Errorf("assistant transcripts %q (a preamble: %v)", said, preamble)
	}

	// Both tools ran in this process's ToolHost with the model's arguments and finished OK.
	var invoked []string
	for _, inv := range r.ToolInvocations {
		invoked = append(invoked, inv.GetName())
		if inv.GetSessionId() != r.SessionID {
			t.Errorf("invocation for session %q", inv.GetSessionId())
		}
		if inv.GetName() == "calendar_lookup" {
			var args struct{ Date string }
			if err := json.Unmarshal([]byte(inv.GetArgumentsJson()), &args); err != nil || args.Date != "tomorrow" {
				t.Errorf("calendar_lookup arguments %s", inv.GetArgumentsJson())
			}
		}
	}
	slices.Sort(invoked)
	if !slices.Equal(invoked, []string{"calendar_lookup", "crm_update"}) {
		t.Errorf("tools invoked %q", invoked)
	}
	if len(r.ToolStatuses) != 2 {
		t.Errorf("tool calls %v", r.ToolStatuses)
	}
	for id, s := range r.ToolStatuses {
		if s != pb.ToolStatus_TOOL_STATUS_OK {
			t.Errorf("tool call %s: %s", id, s)
		}
	}

	if r.Ended.GetReason() != "client_end" || r.Ended.GetSummary().GetToolCalls() != 2 {
		t.Errorf("ended %v", r.Ended)
	}
	if len(r.Interruptions) != 0 {
		t.Errorf("interruptions %v", r.Interruptions)
	}

	// The reply audio: several seconds of it, saved as a readable WAV.
	if r.ReplySeconds() <= 5 {
		t.Errorf("reply audio %.2f s", r.ReplySeconds())
	}
	out := filepath.Join(t.TempDir(), "reply.wav")
	if err := WriteWav(out, r.ReplyPCM, r.SampleRate); err != nil {
		t.Fatal(err)
	}
	pcm, rate, err := ReadWav(out)
	if err != nil || rate != 16000 || !bytes.Equal(pcm, r.ReplyPCM) {
		t.Errorf("saved WAV: %d bytes at %d Hz, err %v", len(pcm), rate, err)
	}
	if bytes.Count(pcm, []byte{0}) == len(pcm) {
		t.Error("reply audio is silence")
	}
}

// Barge-in: the WAV is spoken again over the answer; Interrupted must cut it from the saved reply,
// and the caller's next turn must get its own answer.
func TestBargeInInterruptsTheAnswer(t *testing.T) {
	sidecar := os.Getenv("SIDECAR_ADDR")
	if sidecar == "" {
		t.Fatal("SIDECAR_ADDR must name a running sidecar (run ./run_tests.sh)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r, err := RunSession(ctx, Options{Sidecar: sidecar, Wav: "../../../services/demo/assets/sample-16k.wav", Log: t.Logf, BargeIn: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Interruptions) != 1 || r.Interruptions[0].GetItemId() == "" {
		t.Fatalf("interruptions %v", r.Interruptions)
	}
	var said []string
	for _, a := range r.AssistantTranscripts {
		said = append(said, a.GetText())
	}
	if slices.ContainsFunc(said, func(s string) bool { return strings.Contains(s, "dentist") }) {
		t.Errorf("the interrupted answer has a final transcript: %q", said)
	}
	if !slices.ContainsFunc(said, func(s string) bool { return strings.Contains(s, "offline realtime simulator") }) {
		t.Errorf("no answer to the second turn: %q", said)
	}
	if len(r.UserTranscripts) != 2 {
		t.Errorf("user transcripts %q", r.UserTranscripts)
	}
	if len(r.ToolInvocations) != 2 {
		t.Errorf("tool invocations %v", r.ToolInvocations)
	}
	if r.Ended.GetReason() != "client_end" || r.Ended.GetSummary().GetInterruptions() != 1 {
		t.Errorf("ended %v", r.Ended)
	}
	// Reply audio: the preamble and the second answer, the cut answer kept only up to played_ms.
	if s := r.ReplySeconds(); s <= 3 || s >= 12 {
		t.Errorf("reply audio %.2f s", s)
	}
}
