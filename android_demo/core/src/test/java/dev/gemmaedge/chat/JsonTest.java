package dev.gemmaedge.chat;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.fail;

import java.util.List;
import java.util.Map;
import org.junit.Test;

public class JsonTest {
  @Test
  public void parsesNestedValuesAndEscapes() {
    Map<?, ?> m = (Map<?, ?>) Json.parse(" {\"a\": [1, -2.5e1, true, null], \"s\": \"x\\n\\u00e9\\\"\"} ");
    assertEquals(List.of(1.0, -25.0, true), ((List<?>) m.get("a")).subList(0, 3));
    assertNull(((List<?>) m.get("a")).get(3));
    assertEquals("x\né\"", m.get("s"));
  }

  @Test
  public void rejectsMalformedInputWithItsOffset() {
    for (String bad : new String[] {"{\"a\" 1}", "[1,]", "\"open", "{} x", ""}) {
      try {
        Json.parse(bad);
        fail(bad);
      } catch (IllegalArgumentException e) {
        assertEquals(true, e.getMessage().contains("offset"));
      }
    }
  }
}
