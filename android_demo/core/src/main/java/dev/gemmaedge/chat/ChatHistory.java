package dev.gemmaedge.chat;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * A multi-turn conversation that fits itself into the model's context: the oldest user/model pairs
 * are dropped (the system prompt is kept) until the prompt plus room for the reply fits.
 */
public final class ChatHistory {
  private final String systemPrompt;
  private final List<Message> turns = new ArrayList<>();

  /** @param systemPrompt folded into the first user turn; null or empty for none */
  public ChatHistory(String systemPrompt) {
    this.systemPrompt = systemPrompt == null ? "" : systemPrompt;
  }

  public void addUser(String text) {
    if (!turns.isEmpty() && turns.get(turns.size() - 1).role.equals("user")) {
      throw new IllegalStateException("the previous user message has no model reply yet");
    }
    turns.add(Message.user(text));
  }

  public void addModel(String text) {
    if (turns.isEmpty() || !turns.get(turns.size() - 1).role.equals("user")) {
      throw new IllegalStateException("a model reply must follow a user message");
    }
    turns.add(Message.model(text));
  }

  /** Drops a trailing user message (e.g. the user stopped generation before any text arrived). */
  public void dropUnansweredUser() {
    if (!turns.isEmpty() && turns.get(turns.size() - 1).role.equals("user")) {
      turns.remove(turns.size() - 1);
    }
  }

  public List<Message> turns() {
    return Collections.unmodifiableList(turns);
  }

  public void clear() {
    turns.clear();
  }

  /** The prompt for the next reply and how many old turns it left out. */
  public static final class Prompt {
    public final String text;
    public final int tokens;
    public final int droppedTurns;

    Prompt(String text, int tokens, int droppedTurns) {
      this.text = text;
      this.tokens = tokens;
      this.droppedTurns = droppedTurns;
    }
  }

  /**
   * Formats the newest turns that fit in {@code contextTokens - replyTokens}.
   *
   * @throws IllegalStateException when the last turn is not a user message, or when even the latest
   *     user message alone does not fit
   */
  public Prompt prompt(int contextTokens, int replyTokens, TokenCounter counter) {
    if (turns.isEmpty() || !turns.get(turns.size() - 1).role.equals("user")) {
      throw new IllegalStateException("add a user message before asking for a prompt");
    }
    int budget = contextTokens - replyTokens;
    for (int first = 0; first < turns.size(); first += 2) {
      String text = ChatTemplate.format(withSystem(turns.subList(first, turns.size())), true);
      int tokens = counter.count(text);
      if (tokens <= budget) {
        return new Prompt(text, tokens, first);
      }
    }
    throw new IllegalStateException(
        "the message is too long for the model's context of " + contextTokens + " tokens with "
            + replyTokens + " kept for the reply; shorten it or export with a larger --max-seq-len");
  }

  private List<Message> withSystem(List<Message> tail) {
    List<Message> all = new ArrayList<>();
    if (!systemPrompt.isEmpty()) {
      all.add(Message.system(systemPrompt));
    }
    all.addAll(tail);
    return all;
  }
}
