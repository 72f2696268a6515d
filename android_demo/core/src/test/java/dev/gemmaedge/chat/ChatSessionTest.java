package dev.gemmaedge.chat;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.Arrays;
import org.junit.Test;

public class ChatSessionTest {
  private static final TokenCounter BOUND = TokenCounter.UTF8_BOUND;

  @Test
  public void firstTurnSendsTheConversationLaterTurnsOnlyTheirOwn() {
    ChatSession chat = new ChatSession(null, 2048, 256, BOUND);
    ChatSession.Turn first = chat.next("Name three rivers in Europe.");
    assertTrue(first.reset);
    assertEquals(ChatTemplate.format(Arrays.asList(Message.user("Name three rivers in Europe.")), true), first.text);
    chat.finished(first, "The Danube, the Rhine and the Seine.", true, "<end_of_turn>", 12, 15, 11);
    assertTrue(chat.live());
    assertEquals(26, chat.cachedTokens());
    ChatSession.Turn second = chat.next("Which is the longest?");
    assertFalse(second.reset);
    assertEquals(ChatTemplate.continuation("Which is the longest?", ""), second.text);
    chat.finished(second, "The Danube.", true, "<end_of_turn>", 5, 12, 4);
    assertEquals(42, chat.cachedTokens());
    // the cache plus each continuation is the whole conversation as the template writes it
    assertEquals(ChatTemplate.format(chat.history().turns(), false),
        first.text + "The Danube, the Rhine and the Seine." + second.text + "The Danube." + "<end_of_turn>\n");
  }

  @Test
  public void aReplyCutAtTheTokenLimitIsContinuedWithItsUnfedLastPiece() {
    ChatSession chat = new ChatSession(null, 2048, 256, BOUND);
    ChatSession.Turn first = chat.next("Name three rivers.");
    chat.finished(first, "The Danube, the Rhine", false, " Rhine", 6, 15, 5); // 6 pieces = 5 fed + 1 shown
    assertTrue(chat.live());
    ChatSession.Turn second = chat.next("Go on");
    assertFalse(second.reset);
    assertEquals(" Rhine<end_of_turn>\n<start_of_turn>user\nGo on<end_of_turn>\n<start_of_turn>model\n", second.text);
    chat.finished(second, "and the Seine.", true, "<end_of_turn>", 5, 14, 4);
    assertEquals(ChatTemplate.continuation("More", ""), chat.next("More").text);
  }

  @Test
  public void aReplyWhoseLastTokenIsUnknownMakesTheNextTurnReset() {
    String[][] cases = {{"<eos>: it prints nothing", ""}, {"merged pieces", "ok"}, {"no stats", "ok"}};
    for (String[] c : cases) {
      ChatSession chat = new ChatSession("Be brief.", 2048, 256, BOUND);
      ChatSession.Turn first = chat.next("Hi");
      int generated = c[0].equals("no stats") ? -1 : 5;
      int pieces = c[0].equals("merged pieces") ? 4 : 6;
      chat.finished(first, "Hello", false, c[1], pieces, -1, generated);
      assertFalse(c[0], chat.live());
      ChatSession.Turn second = chat.next("Again");
      assertTrue(c[0], second.reset);
      assertEquals(c[0], ChatTemplate.format(Arrays.asList(Message.system("Be brief."), Message.user("Hi"),
          Message.model("Hello"), Message.user("Again")), true), second.text);
    }
  }

  @Test
  public void aTurnThatWouldOverflowResetsWithTheHistoryCut() {
    ChatSession chat = new ChatSession(null, 400, 100, BOUND);
    String longText = "word ".repeat(40); // ~200 UTF-8 bytes: two pairs never fit in 300
    ChatSession.Turn t = chat.next(longText);
    chat.finished(t, "fine", true, "<end_of_turn>", 3, 60, 2);
    t = chat.next(longText);
    assertFalse("fits: 62 cached + ~215 + 100 <= 400", t.reset);
    chat.finished(t, "ok", true, "<end_of_turn>", 3, 60, 2);
    t = chat.next(longText);
    assertTrue("124 cached + ~215 + 100 > 400", t.reset);
    assertTrue(t.droppedTurns >= 2);
    assertTrue(t.tokensBound <= 300);
  }

  @Test
  public void failuresAndClearingStartAFreshContext() {
    ChatSession chat = new ChatSession(null, 2048, 256, BOUND);
    ChatSession.Turn t = chat.next("a");
    chat.finished(t, "b", true, "<end_of_turn>", 3, 10, 2);
    t = chat.next("c");
    chat.failed();
    assertEquals(2, chat.history().turns().size());
    assertTrue(chat.next("c again").reset);
    chat.clear();
    assertEquals(0, chat.cachedTokens());
    assertTrue(chat.next("fresh").reset);
    assertEquals(1, chat.history().turns().size());
  }

  @Test
  public void aMessageTooLongForTheContextIsRefusedAndNotKept() {
    ChatSession chat = new ChatSession(null, 300, 100, BOUND);
    try {
      chat.next("x".repeat(500));
      fail("accepted a message longer than the context");
    } catch (IllegalStateException e) {
      assertTrue(e.getMessage().contains("too long"));
    }
    assertEquals(0, chat.history().turns().size());
    assertTrue(chat.next("short").reset);
  }

  @Test
  public void aContextWithoutRoomForARepyIsRefused() {
    try {
      new ChatSession(null, 256, 256, BOUND);
      fail("accepted a context no larger than the reply");
    } catch (IllegalArgumentException e) {
      assertTrue(e.getMessage().contains("no room"));
    }
  }
}
