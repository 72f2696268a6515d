package dev.gemmaedge.chat;

import java.util.Locale;
import java.util.Map;

/**
 * Figures shown after each answer, from the JSON ExecuTorch's runner passes to
 * {@code LlmCallback.onStats} (extension/llm/runner/stats.h). Rates use the runner's own definitions:
 * prefill = prompt tokens over (prompt_eval_end - inference_start), decode = generated tokens over
 * (inference_end - prompt_eval_end).
 */
public final class GenerationStats {
  public final int promptTokens;
  public final int generatedTokens;
  public final long timeToFirstTokenMs;
  public final double prefillTokensPerSecond;
  public final double decodeTokensPerSecond;

  public GenerationStats(int promptTokens, int generatedTokens, long timeToFirstTokenMs,
      double prefillTokensPerSecond, double decodeTokensPerSecond) {
    this.promptTokens = promptTokens;
    this.generatedTokens = generatedTokens;
    this.timeToFirstTokenMs = timeToFirstTokenMs;
    this.prefillTokensPerSecond = prefillTokensPerSecond;
    this.decodeTokensPerSecond = decodeTokensPerSecond;
  }

  /** @throws IllegalArgumentException when the JSON lacks a field the figures need */
  public static GenerationStats fromRunnerJson(String json) {
    Object parsed = Json.parse(json);
    if (!(parsed instanceof Map)) {
      throw new IllegalArgumentException("runner stats: expected a JSON object");
    }
    Map<?, ?> m = (Map<?, ?>) parsed;
    long start = field(m, "inference_start_ms");
    long promptEnd = field(m, "prompt_eval_end_ms");
    long firstToken = field(m, "first_token_ms");
    long end = field(m, "inference_end_ms");
    int prompt = (int) field(m, "prompt_tokens");
    int generated = (int) field(m, "generated_tokens");
    return new GenerationStats(prompt, generated, firstToken - start,
        rate(prompt, promptEnd - start), rate(generated, end - promptEnd));
  }

  private static double rate(int tokens, long ms) {
    return ms > 0 ? tokens * 1000.0 / ms : 0.0;
  }

  private static long field(Map<?, ?> m, String key) {
    Object v = m.get(key);
    if (!(v instanceof Double)) {
      throw new IllegalArgumentException("runner stats: no numeric field '" + key + "'");
    }
    return ((Double) v).longValue();
  }

  /** One line for the chat screen, e.g. "47 tokens · 68.6 tok/s · first token 204 ms". */
  public String summary() {
    return String.format(Locale.ROOT, "%d tokens · %.1f tok/s · first token %d ms · prompt %d tokens at %.1f tok/s",
        generatedTokens, decodeTokensPerSecond, timeToFirstTokenMs, promptTokens, prefillTokensPerSecond);
  }
}
