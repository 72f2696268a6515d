package dev.gemmaedge.chat;

import java.util.Map;

/**
 * What the app needs from the {@code manifest.json} that {@code gemma-edge export pte} writes beside the
 * {@code .pte}: the KV-cache length the program was exported with (a prompt past it fails in the runner)
 * and the prefill length of one call (the runner splits longer prompts).
 */
public final class ExportManifest {
  /** Tokens the KV cache holds: prompt and replies of the whole conversation must fit. */
  public final int contextTokens;
  /** Tokens one prefill call takes. */
  public final int prefillTokens;

  public ExportManifest(int contextTokens, int prefillTokens) {
    this.contextTokens = contextTokens;
    this.prefillTokens = prefillTokens;
  }

  /** @throws IllegalArgumentException when the JSON is not an export manifest of a text .pte */
  public static ExportManifest parse(String json) {
    Object parsed = Json.parse(json);
    if (!(parsed instanceof Map) || !(((Map<?, ?>) parsed).get("metadata") instanceof Map)) {
      throw new IllegalArgumentException("manifest.json: no metadata object; export the .pte with gemma-edge");
    }
    Map<?, ?> meta = (Map<?, ?>) ((Map<?, ?>) parsed).get("metadata");
    int context = positive(meta, "get_max_context_len");
    int prefill = meta.containsKey("get_max_seq_len") ? positive(meta, "get_max_seq_len") : context;
    return new ExportManifest(context, prefill);
  }

  private static int positive(Map<?, ?> meta, String key) {
    Object v = meta.get(key);
    if (!(v instanceof Double) || (Double) v < 1 || (Double) v != Math.floor((Double) v)) {
      throw new IllegalArgumentException("manifest.json: metadata." + key + " is not a positive integer");
    }
    return ((Double) v).intValue();
  }
}
