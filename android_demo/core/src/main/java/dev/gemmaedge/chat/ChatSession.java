package dev.gemmaedge.chat;

/**
 * A chat that keeps the runner's KV cache between turns, as ExecuTorch's own LlamaDemo does. The first
 * message sends the formatted conversation (the runner adds {@code <bos>} after a reset); each later one
 * sends only its new turn ({@link ChatTemplate#continuation}), starting with what the cache lacks of the
 * reply: the runner feeds each token only when it generates the next, so the last one (the
 * {@code <end_of_turn>} it stopped at, or the last piece of a reply cut at the token limit) was shown but
 * never cached. The context is reset and the (truncated) history prefilled again when the next turn would
 * not fit, and when that last token cannot be known from the text: a reply that ended at {@code <eos>} (it
 * prints nothing) or whose pieces the runner merged (fewer pieces than tokens).
 *
 * <p>Plain Java: the app asks {@link #next} for what to send, tells {@link #finished} (or {@link #failed})
 * what happened, and calls {@code resetContext()} when a turn says so.
 */
public final class ChatSession {
  private final ChatHistory history;
  private final int contextTokens;
  private final int replyTokens;
  private final TokenCounter counter;
  private boolean live;
  private int cachedTokens;
  private String unfed = ""; // what the cache lacks of the last reply

  /** What to send for one user message. */
  public static final class Turn {
    /** The prompt text for {@code LlmModule.generate}. */
    public final String text;
    /** Call {@code resetContext()} first: the text is the whole (truncated) conversation. */
    public final boolean reset;
    /** Old user/model pairs the reset prompt left out to fit the context. */
    public final int droppedTurns;
    /** An upper bound of the tokens {@link #text} costs (BOS included on a reset). */
    public final int tokensBound;

    Turn(String text, boolean reset, int droppedTurns, int tokensBound) {
      this.text = text;
      this.reset = reset;
      this.droppedTurns = droppedTurns;
      this.tokensBound = tokensBound;
    }
  }

  /**
   * @param contextTokens the export's context (manifest.json's {@code get_max_context_len})
   * @param replyTokens room kept for each reply
   */
  public ChatSession(String systemPrompt, int contextTokens, int replyTokens, TokenCounter counter) {
    if (contextTokens <= replyTokens || replyTokens <= 0) {
      throw new IllegalArgumentException(
          "context of " + contextTokens + " tokens leaves no room for " + replyTokens + "-token replies");
    }
    this.history = new ChatHistory(systemPrompt);
    this.contextTokens = contextTokens;
    this.replyTokens = replyTokens;
    this.counter = counter;
  }

  /**
   * Adds the user's message and says what to send for it.
   *
   * @throws IllegalStateException when even this message alone does not fit the context (the message
   *     is not kept)
   */
  public Turn next(String userText) {
    history.addUser(userText);
    String continuation = ChatTemplate.continuation(userText, unfed);
    int bound = counter.count(continuation) - 1; // a continuation gets no BOS
    if (live && cachedTokens + bound + replyTokens <= contextTokens) {
      return new Turn(continuation, false, 0, bound);
    }
    try {
      ChatHistory.Prompt prompt = history.prompt(contextTokens, replyTokens, counter);
      return new Turn(prompt.text, true, prompt.droppedTurns, prompt.tokens);
    } catch (IllegalStateException e) {
      history.dropUnansweredUser();
      throw e;
    }
  }

  /**
   * The runner finished {@code turn}.
   *
   * @param reply the text shown (cut at the stop marker)
   * @param endedAtStopMarker the runner stopped at {@code <end_of_turn>} (the stop filter saw it)
   * @param lastPiece the last text the runner's callback passed on (null if none)
   * @param pieces how many pieces the callback passed on
   * @param promptTokens the runner's own count of the turn's prompt tokens ({@code prompt_tokens}), or -1
   * @param generatedTokens the runner's count of tokens it fed back ({@code generated_tokens}), or -1
   */
  public void finished(Turn turn, String reply, boolean endedAtStopMarker, String lastPiece, int pieces,
      int promptTokens, int generatedTokens) {
    if (reply.isEmpty()) {
      history.dropUnansweredUser();
    } else {
      history.addModel(reply);
    }
    int prompt = promptTokens >= 0 ? promptTokens : turn.tokensBound;
    int generated = generatedTokens >= 0 ? generatedTokens : counter.count(reply);
    cachedTokens = (turn.reset ? 0 : cachedTokens) + prompt + generated;
    // The runner emitted generated + 1 tokens, one callback each unless it merged pieces (it holds back
    // incomplete UTF-8): only then is the last piece exactly the token the cache lacks.
    boolean onePiecePerToken = generatedTokens >= 0 && pieces == generatedTokens + 1;
    if (reply.isEmpty()) {
      live = false;
    } else if (endedAtStopMarker) {
      live = true;
      unfed = "";
    } else {
      live = onePiecePerToken && lastPiece != null && !lastPiece.isEmpty();
      unfed = live ? lastPiece : "";
    }
  }

  /** The turn failed (an error, or nothing arrived): its message is dropped and the next turn resets. */
  public void failed() {
    history.dropUnansweredUser();
    live = false;
    unfed = "";
  }

  /** Forgets the conversation; the app resets the context before the next message. */
  public void clear() {
    history.clear();
    live = false;
    cachedTokens = 0;
    unfed = "";
  }

  /** Whether the runner's cache holds the whole conversation so far. */
  public boolean live() {
    return live;
  }

  /** Tokens in the runner's cache (exact when the runner reported its counts, else an upper bound). */
  public int cachedTokens() {
    return cachedTokens;
  }

  /**
   * Tokens kept for each reply: pass it as the generation's {@code maxNewTokens}. A {@code .pte} whose
   * prefill call is shorter than its context ({@code get_max_seq_len < get_max_context_len}) makes
   * ExecuTorch's runner count its {@code seqLen} budget from position 0 instead of from what the cache
   * holds, so {@code seqLen} alone would let a reply run past the context.
   */
  public int replyTokens() {
    return replyTokens;
  }

  public ChatHistory history() {
    return history;
  }
}
