package dev.gemmaedge.chat;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.junit.Test;

public class ChatTemplateTest {
  @SuppressWarnings("unchecked")
  private static List<Message> messages(Map<String, Object> vector) {
    List<Message> out = new ArrayList<>();
    for (Object o : (List<Object>) vector.get("messages")) {
      Map<String, Object> m = (Map<String, Object>) o;
      out.add(new Message((String) m.get("role"), (String) m.get("content")));
    }
    return out;
  }

  @SuppressWarnings("unchecked")
  private static List<Map<String, Object>> list(String key) throws Exception {
    return (List<Map<String, Object>>) Vectors.chat().get(key);
  }

  @Test
  public void continuationsMatchPythonByteForByte() throws Exception {
    List<Map<String, Object>> vectors = list("continuations");
    assertTrue("too few continuations", vectors.size() >= 3);
    for (Map<String, Object> v : vectors) {
      assertEquals((String) v.get("content"), v.get("text"),
          ChatTemplate.continuation((String) v.get("content"), (String) v.get("unfed")));
    }
  }

  @Test
  public void formatsEverySharedVectorByteForByte() throws Exception {
    List<Map<String, Object>> vectors = list("vectors");
    assertTrue("too few vectors", vectors.size() >= 10);
    for (Map<String, Object> v : vectors) {
      String got = ChatTemplate.format(messages(v), (Boolean) v.get("add_generation_prompt"));
      assertEquals((String) v.get("name"), v.get("prompt"), got);
    }
  }

  @Test
  public void refusesTheSharedInvalidConversations() throws Exception {
    List<Map<String, Object>> invalid = list("invalid");
    assertFalse(invalid.isEmpty());
    for (Map<String, Object> v : invalid) {
      try {
        ChatTemplate.format(messages(v), true);
        fail("accepted: " + v.get("name"));
      } catch (IllegalArgumentException expected) {
        assertTrue(expected.getMessage().contains("alternate"));
      }
    }
  }

  @Test
  @SuppressWarnings("unchecked")
  public void whitespaceIsPythonsWhitespace() throws Exception {
    Set<Integer> python = new HashSet<>();
    for (Object o : (List<Object>) Vectors.chat().get("python_whitespace")) {
      python.add(((Double) o).intValue());
    }
    for (int c = 0; c <= 0xFFFF; c++) {
      assertEquals("U+" + Integer.toHexString(c), python.contains(c), ChatTemplate.isPythonSpace((char) c));
    }
    assertTrue("python whitespace outside the BMP", python.stream().allMatch(c -> c <= 0xFFFF));
  }

  @Test
  public void utf8BoundNeverUndercountsTheRealTokenizer() throws Exception {
    for (Map<String, Object> v : list("vectors")) {
      int real = ((Double) v.get("prompt_tokens")).intValue();
      int bound = TokenCounter.UTF8_BOUND.count((String) v.get("prompt"));
      assertTrue(v.get("name") + ": bound " + bound + " < real " + real, bound >= real);
    }
  }

  @Test
  public void utf8BoundCountsMarkersAsOneToken() {
    String prompt = "<start_of_turn>user\nhi<end_of_turn>\n";
    // BOS + 2 markers + "user\nhi\n" (8 bytes)
    assertEquals(1 + 2 + 8, TokenCounter.UTF8_BOUND.count(prompt));
    assertEquals(1 + 2, TokenCounter.UTF8_BOUND.count("é"));
  }
}
