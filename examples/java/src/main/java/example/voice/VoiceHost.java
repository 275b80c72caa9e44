package example.voice;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import com.google.protobuf.ByteString;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.InsecureServerCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Server;
import io.grpc.stub.StreamObserver;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicBoolean;
import voice.v1.Sidecar.AudioFormat;
import voice.v1.Sidecar.AudioFrame;
import voice.v1.Sidecar.ClientMessage;
import voice.v1.Sidecar.Codec;
import voice.v1.Sidecar.Control;
import voice.v1.Sidecar.Empty;
import voice.v1.Sidecar.Reasoning;
import voice.v1.Sidecar.ReasoningEffort;
import voice.v1.Sidecar.Role;
import voice.v1.Sidecar.ServerMessage;
import voice.v1.Sidecar.SessionEnded;
import voice.v1.Sidecar.SessionStart;
import voice.v1.Sidecar.ToolDefinition;
import voice.v1.Sidecar.ToolInvocation;
import voice.v1.Sidecar.ToolOutput;
import voice.v1.Sidecar.ToolRouting;
import voice.v1.Sidecar.ToolStatus;
import voice.v1.Sidecar.Transcript;
import voice.v1.ToolHostGrpc;
import voice.v1.VoiceSidecarGrpc;

/**
 * A voice-sidecar host in Java. It runs a {@code ToolHost} gRPC server with two tools
 * (calendar_lookup and crm_update), opens one {@code Converse} stream, streams a mono 16-bit WAV in
 * real time in 20 ms frames (then silence, like an open phone line), prints transcripts and events,
 * handles {@code Interrupted}, ends the session once the assistant has answered after its tool calls,
 * and writes the assistant's audio to a WAV file.
 */
public final class VoiceHost {

  /** What one session produced. */
  public record Result(
      String sessionId,
      List<String> userTranscripts,
      List<Transcript> assistantTranscripts,
      List<ToolInvocation> toolInvocations,
      Map<String, ToolStatus> toolStatuses,
      int interruptions,
      byte[] replyPcm,
      int sampleRate,
      SessionEnded ended) {
    public double replySeconds() {
      return replyPcm.length / 2.0 / sampleRate;
    }
  }

  // ------------------------------------------------------------------------------------------------
  // Tools. Latencies are artificial, to show that the sidecar runs parallel calls in parallel.
  // ------------------------------------------------------------------------------------------------

  static List<ToolDefinition> tools() {
    return List.of(
        ToolDefinition.newBuilder()
            .setName("calendar_lookup")
            .setDescription("Look up the caller's calendar events for a date.")
            .setParametersJsonSchema(
                "{\"type\":\"object\",\"properties\":{\"date\":{\"type\":\"string\"}},\"required\":[\"date\"]}")
            .setTimeoutMs(5000)
            .build(),
        ToolDefinition.newBuilder()
            .setName("crm_update")
            .setDescription("Add a note to the caller's CRM record.")
            .setParametersJsonSchema(
                "{\"type\":\"object\",\"properties\":{\"contact\":{\"type\":\"string\"},"
                    + "\"note\":{\"type\":\"string\"}},\"required\":[\"contact\",\"note\"]}")
            .setTimeoutMs(5000)
            .build());
  }

  /** The ToolHost service the sidecar calls. gRPC runs each Invoke on its own executor thread. */
  static final class Tools extends ToolHostGrpc.ToolHostImplBase {
    final List<ToolInvocation> invocations = Collections.synchronizedList(new ArrayList<>());

    @Override
    public void invoke(ToolInvocation inv, StreamObserver<ToolOutput> reply) {
      invocations.add(inv);
      ToolOutput out;
      try {
        out = ToolOutput.newBuilder().setOutputJson(run(inv.getName(), inv.getArgumentsJson())).build();
      } catch (Exception e) {
        // A failing tool is an error the model can talk about, not an RPC failure.
        out = ToolOutput.newBuilder().setError(e.getMessage()).build();
      }
      reply.onNext(out);
      reply.onCompleted();
    }

    private static String run(String name, String argumentsJson) throws Exception {
      JsonObject args = JsonParser.parseString(argumentsJson.isEmpty() ? "{}" : argumentsJson).getAsJsonObject();
      JsonObject out = new JsonObject();
      switch (name) {
        case "calendar_lookup" -> {
          Thread.sleep(600);
          out.add("date", args.get("date"));
          JsonArray events = new JsonArray();
          events.add(event("09:30", "Dentist"));
          events.add(event("14:00", "Project review with Dana"));
          out.add("events", events);
        }
        case "crm_update" -> {
          Thread.sleep(400);
          out.addProperty("status", "saved");
          out.add("contact", args.get("contact"));
          out.addProperty("note_id", "N-1042");
        }
        default -> throw new IllegalArgumentException("no such tool " + name);
      }
      return out.toString();
    }

    private static JsonObject event(String time, String title) {
      JsonObject e = new JsonObject();
      e.addProperty("time", time);
      e.addProperty("title", title);
      return e;
    }
  }

  // ------------------------------------------------------------------------------------------------
  // WAV in and out (mono PCM16 only).
  // ------------------------------------------------------------------------------------------------

  /** Mono PCM16 samples (little-endian bytes) and their rate. */
  public record Pcm(byte[] data, int rate) {}

  public static Pcm readWav(Path file) throws IOException {
    ByteBuffer b = ByteBuffer.wrap(Files.readAllBytes(file)).order(ByteOrder.LITTLE_ENDIAN);
    if (b.getInt(0) != 0x46464952 || b.getInt(8) != 0x45564157) { // "RIFF", "WAVE"
      throw new IOException(file + " is not a WAV file");
    }
    int rate = 0;
    boolean pcm16Mono = false;
    for (int off = 12; off + 8 <= b.limit(); ) {
      int id = b.getInt(off);
      int size = b.getInt(off + 4);
      int body = off + 8;
      if (id == 0x20746d66) { // "fmt "
        pcm16Mono = b.getShort(body) == 1 && b.getShort(body + 2) == 1 && b.getShort(body + 14) == 16;
        rate = b.getInt(body + 4);
      } else if (id == 0x61746164) { // "data"
        if (!pcm16Mono) {
          throw new IOException(file + " must be mono 16-bit PCM");
        }
        byte[] data = new byte[Math.min(size, b.limit() - body)];
        b.get(body, data);
        return new Pcm(data, rate);
      }
      off = body + size + (size & 1);
    }
    throw new IOException(file + " has no data chunk");
  }

  public static void writeWav(Path file, byte[] pcm, int rate) throws IOException {
    ByteBuffer h = ByteBuffer.allocate(44).order(ByteOrder.LITTLE_ENDIAN);
    h.putInt(0x46464952).putInt(36 + pcm.length).putInt(0x45564157); // RIFF, size, WAVE
    h.putInt(0x20746d66).putInt(16).putShort((short) 1).putShort((short) 1); // fmt, PCM, mono
    h.putInt(rate).putInt(rate * 2).putShort((short) 2).putShort((short) 16);
    h.putInt(0x61746164).putInt(pcm.length); // data
    try (OutputStream out = Files.newOutputStream(file)) {
      out.write(h.array());
      out.write(pcm);
    }
  }

  // ------------------------------------------------------------------------------------------------
  // One session.
  // ------------------------------------------------------------------------------------------------

  /** Runs one session against the sidecar at {@code sidecar} (host:port). */
  public static Result runSession(String sidecar, Path wav, Path out, int timeoutSecs) throws Exception {
    return runSession(sidecar, wav, out, timeoutSecs, false);
  }

  /**
   * As above; {@code bargeIn} is a test hook: speak the WAV again as soon as the answer after the tool
   * calls starts playing, to barge in on it (the sidecar then sends Interrupted).
   */
  public static Result runSession(String sidecar, Path wav, Path out, int timeoutSecs, boolean bargeIn)
      throws Exception {
    Pcm speech = readWav(wav);
    int rate = speech.rate();

    // The ToolHost on a free loopback port; the session's tool_routing points the sidecar at it.
    Tools tools = new Tools();
    Server toolServer =
        Grpc.newServerBuilderForPort(0, InsecureServerCredentials.create()).addService(tools).build().start();
    String toolAddress = "http://127.0.0.1:" + toolServer.getPort();

    ManagedChannel channel = Grpc.newChannelBuilder(sidecar, InsecureChannelCredentials.create()).build();
    ScheduledExecutorService mic = Executors.newSingleThreadScheduledExecutor();
    long t0 = System.nanoTime();
    try {
      Session s = new Session(rate, t0, bargeIn);
      // waitForReady: the sidecar may still be starting.
      StreamObserver<ClientMessage> requests =
          VoiceSidecarGrpc.newStub(channel).withWaitForReady().converse(s);
      s.requests = requests;

      AudioFormat fmt =
          AudioFormat.newBuilder()
              .setCodec(Codec.CODEC_PCM16)
              .setSampleRateHz(rate)
              .setChannels(1)
              .setFrameMs(20)
              .build();
      s.send(
          ClientMessage.newBuilder()
              .setStart(
                  SessionStart.newBuilder()
                      .setInputFormat(fmt)
                      .setOutputFormat(fmt)
                      .setInstructions("You are a helpful phone assistant for a small business.")
                      .addAllTools(tools())
                      .setModel("gpt-realtime-2")
                      .setReasoning(Reasoning.newBuilder().setEffort(ReasoningEffort.REASONING_EFFORT_LOW))
                      .setParallelToolCalls(true)
                      .setToolRouting(ToolRouting.newBuilder().setCallbackAddress(toolAddress)))
              .build());
      s.log(String.format("streaming %.2f s of speech at %d Hz in 20 ms frames", speech.data().length / 2.0 / rate, rate));

      // The "microphone": the WAV in real time, then silence. s.speakAgain restarts the WAV.
      int frameBytes = rate / 50 * 2;
      byte[] silence = new byte[frameBytes];
      long[] seq = {0};
      long[] from = {0}; // the frame at which the WAV (re)starts
      mic.scheduleAtFixedRate(
          () -> {
            if (s.speakAgain.compareAndSet(true, false)) {
              from[0] = seq[0];
            }
            int start = (int) (seq[0] - from[0]) * frameBytes;
            seq[0]++;
            ByteString data =
                start < speech.data().length
                    ? ByteString.copyFrom(speech.data(), start, Math.min(frameBytes, speech.data().length - start))
                    : ByteString.copyFrom(silence);
            s.send(ClientMessage.newBuilder().setAudio(AudioFrame.newBuilder().setData(data).setSeq(seq[0])).build());
          },
          0,
          20,
          TimeUnit.MILLISECONDS);

      try {
        s.done.get(timeoutSecs, TimeUnit.SECONDS);
      } catch (TimeoutException e) {
        throw new IllegalStateException("no end of conversation within " + timeoutSecs + " s");
      }
      ByteArrayOutputStream reply = new ByteArrayOutputStream();
      synchronized (s) {
        for (ByteArrayOutputStream item : s.items.values()) {
          item.writeTo(reply);
        }
      }
      Result r =
          new Result(
              s.sessionId,
              List.copyOf(s.userTranscripts),
              List.copyOf(s.assistantTranscripts),
              List.copyOf(tools.invocations),
              Map.copyOf(s.toolStatuses),
              s.interruptions,
              reply.toByteArray(),
              rate,
              s.ended);
      if (out != null) {
        writeWav(out, r.replyPcm(), rate);
        System.out.printf("assistant audio: %.2f s written to %s%n", r.replySeconds(), out);
      }
      return r;
    } finally {
      mic.shutdownNow();
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
      toolServer.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  /** Receives the sidecar's messages for one session. */
  private static final class Session implements StreamObserver<ServerMessage> {
    final int rate;
    final long t0;
    final boolean bargeIn;
    final AtomicBoolean speakAgain = new AtomicBoolean();
    boolean bargedIn;
    final CompletableFuture<Void> done = new CompletableFuture<>();
    StreamObserver<ClientMessage> requests;
    boolean closed;

    String sessionId = "";
    final List<String> userTranscripts = new ArrayList<>();
    final List<Transcript> assistantTranscripts = new ArrayList<>();
    final Map<String, ToolStatus> toolStatuses = new LinkedHashMap<>();
    // Reply audio per assistant item, so that Interrupted can cut an item at what was heard.
    final Map<String, ByteArrayOutputStream> items = new LinkedHashMap<>();
    int interruptions;
    int pendingTools;
    int toolRoundsDone;
    boolean ending;
    SessionEnded ended;

    Session(int rate, long t0, boolean bargeIn) {
      this.rate = rate;
      this.t0 = t0;
      this.bargeIn = bargeIn;
    }

    void log(String line) {
      System.out.printf("[%6d ms] %s%n", (System.nanoTime() - t0) / 1_000_000, line);
    }

    /** StreamObserver is not thread-safe: the microphone and the event handler both send. */
    synchronized void send(ClientMessage m) {
      if (!closed) {
        requests.onNext(m);
      }
    }

    synchronized void close() {
      if (!closed) {
        closed = true;
        requests.onCompleted();
      }
    }

    @Override
    public synchronized void onNext(ServerMessage m) {
      switch (m.getMessageCase()) {
        case STARTED -> {
          sessionId = m.getStarted().getSessionId();
          log("session " + sessionId + " started: model " + m.getStarted().getModel()
              + ", upstream audio " + m.getStarted().getUpstreamAudioFormat());
        }
        case SPEECH_STARTED -> log("user started speaking");
        case SPEECH_STOPPED -> log("user stopped speaking (at " + m.getSpeechStopped().getAudioEndMs() + " ms of input audio)");
        case TRANSCRIPT -> {
          Transcript t = m.getTranscript();
          if (t.getFinal() && t.getRole() == Role.ROLE_USER) {
            userTranscripts.add(t.getText());
            log("USER:      " + t.getText());
          } else if (t.getFinal() && t.getRole() == Role.ROLE_ASSISTANT) {
            assistantTranscripts.add(t);
            log("ASSISTANT (" + t.getPhase().name().replace("PHASE_", "").toLowerCase() + "): " + t.getText());
          }
        }
        case AUDIO -> {
          if (bargeIn && toolRoundsDone > 0 && !bargedIn) {
            bargedIn = true;
            speakAgain.set(true);
            log("barging in: speaking again over the answer");
          }
          AudioFrame a = m.getAudio();
          byte[] data = a.getData().toByteArray();
          items.computeIfAbsent(a.getItemId(), k -> new ByteArrayOutputStream()).write(data, 0, data.length);
        }
        case INTERRUPTED -> {
          // Barge-in: a player flushes its buffer now. Here the saved reply keeps only what the caller
          // heard of the item and drops the items that were never heard.
          var i = m.getInterrupted();
          interruptions++;
          ByteArrayOutputStream item = items.get(i.getItemId());
          if (item != null) {
            byte[] heard = item.toByteArray();
            int keep = Math.min(heard.length, (int) ((long) i.getPlayedMs() * rate / 1000) * 2);
            item.reset();
            item.write(heard, 0, keep);
          }
          i.getDeletedItemIdsList().forEach(items::remove);
          log("interrupted: " + i.getItemId() + " at " + i.getPlayedMs() + " ms");
        }
        case TOOL_CALL_STARTED -> {
          pendingTools++;
          var c = m.getToolCallStarted();
          toolStatuses.put(c.getCallId(), ToolStatus.TOOL_STATUS_UNSPECIFIED);
          log("tool call  " + c.getCallId() + " " + c.getName() + "(" + c.getArgumentsJson() + ")");
        }
        case TOOL_CALL_FINISHED -> {
          pendingTools = Math.max(0, pendingTools - 1);
          var c = m.getToolCallFinished();
          toolStatuses.put(c.getCallId(), c.getStatus());
          log("tool done  " + c.getCallId() + " " + c.getName() + " " + c.getStatus() + " in " + c.getDurationMs() + " ms");
          if (pendingTools == 0) {
            toolRoundsDone++;
          }
        }
        case RESPONSE_DONE -> {
          var r = m.getResponseDone();
          log("response " + r.getResponseId() + " " + r.getStatus() + ", voice-to-voice " + r.getVoiceToVoiceMs() + " ms");
          // A completed answer after the tool round ends this demo conversation.
          if (r.getStatus().equals("completed") && toolRoundsDone > 0 && pendingTools == 0 && !ending) {
            ending = true;
            send(ClientMessage.newBuilder().setControl(Control.newBuilder().setEnd(Empty.getDefaultInstance())).build());
          }
        }
        case ERROR -> log("error " + m.getError().getCode() + ": " + m.getError().getMessage());
        case ENDED -> {
          ended = m.getEnded();
          log("session ended (" + ended.getReason() + "): " + ended.getSummary().getTurns() + " turn(s), "
              + ended.getSummary().getToolCalls() + " tool call(s)");
          close();
        }
        default -> log(m.getMessageCase().name().toLowerCase());
      }
    }

    @Override
    public void onError(Throwable t) {
      done.completeExceptionally(t);
    }

    @Override
    public void onCompleted() {
      close();
      done.complete(null);
    }
  }

  public static void main(String[] argv) throws Exception {
    String sidecar = "127.0.0.1:50051";
    Path wav = Path.of("../../services/demo/assets/sample-16k.wav");
    Path out = Path.of("reply.wav");
    for (int i = 0; i + 1 < argv.length; i += 2) {
      switch (argv[i]) {
        case "--sidecar" -> sidecar = argv[i + 1];
        case "--wav" -> wav = Path.of(argv[i + 1]);
        case "--out" -> out = Path.of(argv[i + 1]);
        default -> {
          System.err.println("usage: VoiceHost [--sidecar HOST:PORT] [--wav FILE] [--out FILE]");
          System.exit(2);
        }
      }
    }
    runSession(sidecar, wav, out, 60);
  }

  private VoiceHost() {}
}
