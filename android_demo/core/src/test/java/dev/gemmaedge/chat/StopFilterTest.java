package dev.gemmaedge.chat;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;

import java.util.List;
import org.junit.Test;

public class StopFilterTest {
  private static String stream(StopFilter f, String... pieces) {
    StringBuilder shown = new StringBuilder();
    for (String p : pieces) {
      shown.append(f.accept(p));
    }
    return shown.append(f.finish()).toString();
  }

  @Test
  public void cutsAtAMarkerSplitAcrossPieces() {
    StopFilter f = StopFilter.gemma();
    assertEquals("Paris.", stream(f, "Par", "is.", "<end", "_of", "_turn>", "ignored"));
    assertTrue(f.stopped());
    assertEquals("Paris.", f.text());
  }

  @Test
  public void holdsBackOnlyWhatCouldStillBeAMarker() {
    StopFilter f = StopFilter.gemma();
    assertEquals("a ", f.accept("a <"));
    assertEquals("<b", f.accept("b"));
    assertEquals("x", f.accept("x<e"));
    assertEquals("<end>", f.accept("nd>"));
    assertFalse(f.stopped());
  }

  @Test
  public void releasesAPartialMarkerAtTheEnd() {
    StopFilter f = StopFilter.gemma();
    assertEquals("1 <eo", stream(f, "1 ", "<eo"));
    assertFalse(f.stopped());
  }

  @Test
  public void eitherMarkerStopsEveryCharacterSplit() {
    String text = "Hello world<eos>tail";
    for (int split = 0; split <= text.length(); split++) {
      StopFilter f = new StopFilter(List.of("<end_of_turn>", "<eos>"));
      assertEquals("split " + split, "Hello world", stream(f, text.substring(0, split), text.substring(split)));
    }
  }

  @Test
  public void sharedStopMarkersAreTheOnesUsed() throws Exception {
    assertEquals(Vectors.chat().get("stop_markers"), List.of(ChatTemplate.END_OF_TURN, "<eos>"));
  }
}
