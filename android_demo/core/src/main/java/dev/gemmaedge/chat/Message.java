package dev.gemmaedge.chat;

import java.util.Objects;

/** One chat turn: a role ("system", "user", "model" or "assistant") and its text. */
public final class Message {
  public final String role;
  public final String content;

  public Message(String role, String content) {
    this.role = Objects.requireNonNull(role, "role");
    this.content = Objects.requireNonNull(content, "content");
  }

  public static Message system(String content) {
    return new Message("system", content);
  }

  public static Message user(String content) {
    return new Message("user", content);
  }

  public static Message model(String content) {
    return new Message("model", content);
  }

  @Override
  public boolean equals(Object o) {
    return o instanceof Message && ((Message) o).role.equals(role) && ((Message) o).content.equals(content);
  }

  @Override
  public int hashCode() {
    return Objects.hash(role, content);
  }

  @Override
  public String toString() {
    return role + ": " + content;
  }
}
