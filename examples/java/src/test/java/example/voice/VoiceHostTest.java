package example.voice;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.JsonParser;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import voice.v1.Sidecar.Phase;
import voice.v1.Sidecar.ToolInvocation;
import voice.v1.Sidecar.ToolStatus;
import voice.v1.Sidecar.Transcript;

/**
 * One session through the real sidecar, started by ../run_tests.sh on its simulator (address in
 * SIDECAR_ADDR): checks what the host received.
 */
class VoiceHostTest {
  @Test
  void oneCallWithTwoToolsAndSpokenReply() throws Exception {
    String sidecar = System.getenv("SIDECAR_ADDR");
    assertNotNull(sidecar, "SIDECAR_ADDR must name a running sidecar (run ./run_tests.sh)");
    Path wav = Path.of(System.getProperty("user.dir"), "../../services/demo/assets/sample-16k.wav");
    Path out = Files.createTempDirectory("voice-java-").resolve("reply.wav");

    VoiceHost.Result r = VoiceHost.runSession(sidecar, wav, out, 60);

    assertTrue(r.sessionId().startsWith("vs_"), "session id " + r.sessionId());
    assertEquals(1, r.userTranscripts().size(), "user transcripts " + r.userTranscripts());
    assertTrue(r.userTranscripts().get(0).contains("check my calendar for tomorrow"), r.userTranscripts().get(0));

    List<String> said = r.assistantTranscripts().stream().map(Transcript::getText).toList();
    assertTrue(r.assistantTranscripts().stream().anyMatch(t -> t.getPhase() == Phase.PHASE_PREAMBLE), "phases " + said);
    assertTrue(said.stream().anyMatch(t -> t.contains("dentist at nine thirty")), "assistant said " + said);

    // Both tools ran in this process's ToolHost with the model's arguments and finished OK.
    List<String> invoked = r.toolInvocations().stream().map(ToolInvocation::getName).sorted().toList();
    assertEquals(List.of("calendar_lookup", "crm_update"), invoked);
    ToolInvocation cal = r.toolInvocations().stream().filter(i -> i.getName().equals("calendar_lookup")).findFirst().orElseThrow();
    assertEquals("tomorrow", JsonParser.parseString(cal.getArgumentsJson()).getAsJsonObject().get("date").getAsString());
    assertEquals(r.sessionId(), cal.getSessionId());
    assertEquals(2, r.toolStatuses().size());
    assertTrue(r.toolStatuses().values().stream().allMatch(s -> s == ToolStatus.TOOL_STATUS_OK), "statuses " + r.toolStatuses());

    assertEquals("client_end", r.ended().getReason());
    assertEquals(2, r.ended().getSummary().getToolCalls());
    assertEquals(0, r.interruptions());

    // The reply audio: several seconds of it, saved as a readable WAV.
    assertTrue(r.replySeconds() > 5, "reply audio " + r.replySeconds() + " s");
    VoiceHost.Pcm saved = VoiceHost.readWav(out);
    assertEquals(16000, saved.rate());
    assertArrayEquals(r.replyPcm(), saved.data());
    boolean nonSilent = false;
    for (byte b : saved.data()) {
      nonSilent |= b != 0;
    }
    assertTrue(nonSilent, "reply audio is not silence");
  }

  /**
   * Barge-in: the WAV is spoken again over the answer; Interrupted must cut it from the saved reply,
   * and the caller's next turn must get its own answer.
   */
  @Test
  void bargeInInterruptsTheAnswer() throws Exception {
    String sidecar = System.getenv("SIDECAR_ADDR");
    assertNotNull(sidecar, "SIDECAR_ADDR must name a running sidecar (run ./run_tests.sh)");
    Path wav = Path.of(System.getProperty("user.dir"), "../../services/demo/assets/sample-16k.wav");

    VoiceHost.Result r = VoiceHost.runSession(sidecar, wav, null, 60, true);

    assertEquals(1, r.interruptions(), "interruptions");
    List<String> said = r.assistantTranscripts().stream().map(Transcript::getText).toList();
    assertTrue(said.stream().noneMatch(t -> t.contains("dentist")), "the interrupted answer has a final transcript: " + said);
    assertTrue(said.stream().anyMatch(t -> t.contains("offline realtime simulator")), "no answer to the second turn: " + said);
    assertEquals(2, r.userTranscripts().size(), "user transcripts " + r.userTranscripts());
    assertEquals(2, r.toolInvocations().size(), "tool invocations");
    assertEquals("client_end", r.ended().getReason());
    assertEquals(1, r.ended().getSummary().getInterruptions());
    // Reply audio: the preamble and the second answer, the cut answer kept only up to played_ms.
    assertTrue(r.replySeconds() > 3 && r.replySeconds() < 12, "reply audio " + r.replySeconds() + " s");
  }
}
