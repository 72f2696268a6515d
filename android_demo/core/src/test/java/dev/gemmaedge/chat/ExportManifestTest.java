package dev.gemmaedge.chat;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import org.junit.Test;

public class ExportManifestTest {
  @Test
  public void readsTheContextAndPrefillLengths() {
    ExportManifest m = ExportManifest.parse(
        "{\"artifact\": \"model.pte\", \"metadata\": {\"get_max_context_len\": 1024, \"get_max_seq_len\": 256,"
            + " \"get_bos_id\": 2}}");
    assertEquals(1024, m.contextTokens);
    assertEquals(256, m.prefillTokens);
    assertEquals(2048, ExportManifest.parse("{\"metadata\": {\"get_max_context_len\": 2048}}").prefillTokens);
  }

  @Test
  public void refusesWhatIsNotAnExportManifest() {
    for (String bad : new String[] {"[]", "{}", "{\"metadata\": {}}", "{\"metadata\": {\"get_max_context_len\": -1}}",
        "{\"metadata\": {\"get_max_context_len\": 10.5}}", "{\"metadata\": {\"get_max_context_len\": \"2048\"}}"}) {
      try {
        ExportManifest.parse(bad);
        fail("accepted " + bad);
      } catch (IllegalArgumentException e) {
        assertTrue(e.getMessage(), e.getMessage().startsWith("manifest.json"));
      }
    }
  }
}
