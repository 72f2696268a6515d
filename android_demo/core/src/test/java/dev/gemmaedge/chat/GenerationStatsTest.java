package dev.gemmaedge.chat;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.Map;
import org.junit.Test;

public class GenerationStatsTest {
  @Test
  public void ratesMatchTheRunnersOwnFigures() throws Exception {
    // Captured from ExecuTorch's TextLLMRunner on the 270M int4-block32 .pte (android_demo/README.md).
    String json = Vectors.read("runner_stats.json");
    GenerationStats s = GenerationStats.fromRunnerJson(json);
    Map<?, ?> raw = (Map<?, ?>) Json.parse(json);
    assertEquals((Double) raw.get("prefill_token_per_sec"), s.prefillTokensPerSecond, 1e-3);
    assertEquals((Double) raw.get("decode_token_per_sec"), s.decodeTokensPerSecond, 1e-3);
    assertEquals(15, s.promptTokens);
    assertEquals(47, s.generatedTokens);
    assertEquals(204, s.timeToFirstTokenMs);
    assertTrue(s.summary(), s.summary().startsWith("47 tokens · 68.6 tok/s · first token 204 ms"));
  }

  @Test
  public void missingFieldIsNamed() {
    try {
      GenerationStats.fromRunnerJson("{\"prompt_tokens\": 3}");
      fail();
    } catch (IllegalArgumentException e) {
      assertTrue(e.getMessage(), e.getMessage().contains("inference_start_ms"));
    }
  }
}
