package dev.gemmaedge.chat;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Map;

/** Reads files from android_demo/shared/ (the folder is passed as -Dgemma.shared=...). */
final class Vectors {
  private Vectors() {}

  static Path shared(String name) {
    String dir = System.getProperty("gemma.shared", "../shared");
    return Paths.get(dir, name);
  }

  static String read(String name) throws IOException {
    return new String(Files.readAllBytes(shared(name)), StandardCharsets.UTF_8);
  }

  @SuppressWarnings("unchecked")
  static Map<String, Object> chat() throws IOException {
    return (Map<String, Object>) Json.parse(read("chat_vectors.json"));
  }
}
