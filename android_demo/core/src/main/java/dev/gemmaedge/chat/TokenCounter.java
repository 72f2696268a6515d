package dev.gemmaedge.chat;

import java.nio.charset.StandardCharsets;

/** Counts (or bounds) the tokens a prompt costs the runner, BOS included. */
public interface TokenCounter {
  int count(String prompt);

  /**
   * An upper bound that needs no tokenizer: a turn marker is one token and every other token of
   * Gemma's byte-fallback SentencePiece covers at least one UTF-8 byte, so tokens never exceed
   * 1 (BOS) + markers + remaining bytes. The app uses it because LlmModule exposes no tokenizer; it
   * can only over-count, so a prompt it admits never overflows the context.
   */
  TokenCounter UTF8_BOUND =
      prompt -> {
        int markers = 0;
        int markerBytes = 0;
        for (String marker : new String[] {ChatTemplate.START_OF_TURN, ChatTemplate.END_OF_TURN}) {
          for (int i = prompt.indexOf(marker); i >= 0; i = prompt.indexOf(marker, i + marker.length())) {
            markers++;
            markerBytes += marker.length();
          }
        }
        return 1 + markers + prompt.getBytes(StandardCharsets.UTF_8).length - markerBytes;
      };
}
