package dev.gemmaedge.chat;

import java.util.ArrayList;
import java.util.List;

/**
 * Gemma 3's chat template, byte for byte the same as gemma-edge's Python {@code format_chat} (checked
 * by both test suites against android_demo/shared/chat_vectors.json).
 *
 * <p>The prompt has no leading {@code <bos>}: ExecuTorch's runner adds the BOS token itself.
 */
public final class ChatTemplate {
  public static final String START_OF_TURN = "<start_of_turn>";
  public static final String END_OF_TURN = "<end_of_turn>";

  private ChatTemplate() {}

  /**
   * Formats a conversation. A leading system message is folded into the first user turn; the rest
   * must alternate user/model starting with user.
   *
   * @throws IllegalArgumentException when roles do not alternate
   */
  public static String format(List<Message> messages, boolean addGenerationPrompt) {
    List<Message> msgs = new ArrayList<>(messages);
    String prefix = "";
    if (!msgs.isEmpty() && msgs.get(0).role.equals("system")) {
      prefix = msgs.remove(0).content + "\n\n";
    }
    StringBuilder out = new StringBuilder();
    for (int i = 0; i < msgs.size(); i++) {
      Message m = msgs.get(i);
      if (m.role.equals("user") != (i % 2 == 0)) {
        throw new IllegalArgumentException(
            "chat roles must alternate user/assistant/user/..., but message " + i + " has role '" + m.role + "'");
      }
      String role = m.role.equals("assistant") ? "model" : m.role;
      out.append(START_OF_TURN).append(role).append('\n');
      if (i == 0) {
        out.append(prefix);
      }
      out.append(pythonStrip(m.content)).append(END_OF_TURN).append('\n');
    }
    if (addGenerationPrompt) {
      out.append(START_OF_TURN).append("model\n");
    }
    return out.toString();
  }

  /**
   * The text for the next user turn of a chat whose KV cache already holds the conversation (LlmModule
   * keeps it between {@code generate} calls); Python's {@code format_chat_continuation}. ExecuTorch's runner
   * feeds each generated token only when it generates the next, so a reply's last token is emitted but
   * never cached: after a reply that ended at {@code <end_of_turn>} that is the marker this text starts
   * with; after a reply cut at the token limit or stopped, {@code unfed} is that last token's text, sent
   * again before the turn is closed. Then the new user turn and the generation prompt.
   */
  public static String continuation(String userContent, String unfed) {
    return unfed + END_OF_TURN + "\n" + START_OF_TURN + "user\n" + pythonStrip(userContent) + END_OF_TURN + "\n"
        + START_OF_TURN + "model\n";
  }

  /**
   * Python's {@code str.strip()}: the template trims with it, and its whitespace set differs from
   * Java's {@code String.strip()} (Python also strips U+00A0, U+2007, U+202F and U+0085; Java does not).
   */
  static String pythonStrip(String s) {
    int start = 0;
    int end = s.length();
    while (start < end && isPythonSpace(s.charAt(start))) {
      start++;
    }
    while (end > start && isPythonSpace(s.charAt(end - 1))) {
      end--;
    }
    return s.substring(start, end);
  }

  /** Python's {@code str.isspace()} for one UTF-16 unit (every such code point is in the BMP). */
  static boolean isPythonSpace(char c) {
    switch (c) {
      case '\t': case '\n': case 0x0B: case '\f': case '\r':
      case 0x1C: case 0x1D: case 0x1E: case 0x1F: case ' ':
      case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029:
      case 0x202F: case 0x205F: case 0x3000:
        return true;
      default:
        return c >= 0x2000 && c <= 0x200A;
    }
  }
}
