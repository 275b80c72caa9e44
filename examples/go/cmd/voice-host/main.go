// voice-host: one call through voice-sidecar, the reply written to a WAV file.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"

	"voicehost/host"
)

func main() {
	sidecar := flag.String("sidecar", "127.0.0.1:50051", "the sidecar's gRPC address")
	wav := flag.String("wav", "../../services/demo/assets/sample-16k.wav", "speech sample (mono 16-bit WAV)")
	out := flag.String("out", "reply.wav", "where to write the assistant's audio")
	toolsListen := flag.String("tools-listen", "", "address of this host's ToolHost (default: a free loopback port)")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	r, err := host.RunSession(ctx, host.Options{
		Sidecar: *sidecar, Wav: *wav, ToolsListen: *toolsListen,
		Log: func(format string, args ...any) { fmt.Printf(format+"\n", args...) },
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := host.WriteWav(*out, r.ReplyPCM, r.SampleRate); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("assistant audio: %.2f s written to %s\n", r.ReplySeconds(), *out)
}
