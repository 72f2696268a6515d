package dev.gemmaedge.chat;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * Streams generated text to the screen and cuts it at the first stop marker ({@code <end_of_turn>},
 * {@code <eos>}), even when a marker arrives split across callback pieces: text that could still be
 * the start of a marker is held back until the next piece decides it.
 */
public final class StopFilter {
  private final List<String> markers;
  private final StringBuilder pending = new StringBuilder();
  private final StringBuilder shown = new StringBuilder();
  private boolean stopped;

  public StopFilter(List<String> markers) {
    this.markers = new ArrayList<>(markers); // List.copyOf needs Android API 30
  }

  public static StopFilter gemma() {
    return new StopFilter(Arrays.asList(ChatTemplate.END_OF_TURN, "<eos>"));
  }

  /** Feeds one piece; returns the text that may be shown now (possibly empty). */
  public String accept(String piece) {
    if (stopped) {
      return "";
    }
    pending.append(piece);
    int cut = firstMarker();
    if (cut >= 0) {
      stopped = true;
      return emit(pending.substring(0, cut));
    }
    int keep = longestMarkerPrefixAtEnd();
    String out = pending.substring(0, pending.length() - keep);
    pending.delete(0, pending.length() - keep);
    shown.append(out);
    return out;
  }

  /** Call when generation ends: releases held-back text that turned out not to be a marker. */
  public String finish() {
    return stopped ? "" : emit(pending.toString());
  }

  public boolean stopped() {
    return stopped;
  }

  /** Everything shown so far: the reply that goes into the chat history. */
  public String text() {
    return shown.toString();
  }

  private String emit(String s) {
    pending.setLength(0);
    shown.append(s);
    return s;
  }

  private int firstMarker() {
    int best = -1;
    for (String m : markers) {
      int i = pending.indexOf(m);
      if (i >= 0 && (best < 0 || i < best)) {
        best = i;
      }
    }
    return best;
  }

  private int longestMarkerPrefixAtEnd() {
    int best = 0;
    for (String m : markers) {
      for (int n = Math.min(m.length() - 1, pending.length()); n > best; n--) {
        if (pending.substring(pending.length() - n).equals(m.substring(0, n))) {
          best = n;
          break;
        }
      }
    }
    return best;
  }
}
