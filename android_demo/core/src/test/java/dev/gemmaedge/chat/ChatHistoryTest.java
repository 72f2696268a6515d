package dev.gemmaedge.chat;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.List;
import org.junit.Test;

public class ChatHistoryTest {
  /** One "token" per character: budgets in tests are exact to the character. */
  private static final TokenCounter CHARS = String::length;

  private static ChatHistory threeExchanges() {
    ChatHistory h = new ChatHistory("Be brief.");
    h.addUser("first question");
    h.addModel("first answer");
    h.addUser("second question");
    h.addModel("second answer");
    h.addUser("third question");
    return h;
  }

  @Test
  public void keepsEverythingWhenItFits() {
    ChatHistory h = threeExchanges();
    ChatHistory.Prompt p = h.prompt(10_000, 100, CHARS);
    assertEquals(0, p.droppedTurns);
    assertEquals(ChatTemplate.format(List.of(Message.system("Be brief."), Message.user("first question"),
        Message.model("first answer"), Message.user("second question"), Message.model("second answer"),
        Message.user("third question")), true), p.text);
    assertEquals(p.text.length(), p.tokens);
  }

  @Test
  public void dropsOldestPairsAndKeepsTheSystemPrompt() {
    ChatHistory h = threeExchanges();
    String lastTwo = ChatTemplate.format(List.of(Message.system("Be brief."), Message.user("second question"),
        Message.model("second answer"), Message.user("third question")), true);
    ChatHistory.Prompt p = h.prompt(lastTwo.length() + 100, 100, CHARS);
    assertEquals(2, p.droppedTurns);
    assertEquals(lastTwo, p.text);
    ChatHistory.Prompt tighter = h.prompt(lastTwo.length() + 99, 100, CHARS);
    assertEquals(4, tighter.droppedTurns);
    assertTrue(tighter.text.startsWith("<start_of_turn>user\nBe brief.\n\nthird question"));
  }

  @Test
  public void refusesAMessageThatCannotFit() {
    ChatHistory h = new ChatHistory("");
    h.addUser("x".repeat(500));
    try {
      h.prompt(400, 50, CHARS);
      fail();
    } catch (IllegalStateException e) {
      assertTrue(e.getMessage().contains("--max-seq-len"));
    }
  }

  @Test
  public void turnsMustAlternate() {
    ChatHistory h = new ChatHistory(null);
    try {
      h.addModel("no question yet");
      fail();
    } catch (IllegalStateException expected) {
    }
    h.addUser("q");
    try {
      h.addUser("again");
      fail();
    } catch (IllegalStateException expected) {
    }
    h.dropUnansweredUser();
    assertTrue(h.turns().isEmpty());
  }
}
